// The Apollo Client the dashboard runs on: queries and mutations POSTed by their persisted id
// (the text follows only when the server asks for it), subscriptions over graphql-ws. One client
// per credential: signing in or out makes a new one, which also empties the cache.
import { ApolloClient, ApolloLink, DocumentTransform, HttpLink, InMemoryCache } from "@apollo/client";
import type { FieldMergeFunction, Reference } from "@apollo/client/cache";
import { ErrorLink } from "@apollo/client/link/error";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { getMainDefinition } from "@apollo/client/utilities";
import { generatePersistedQueryIdsFromManifest, sortTopLevelDefinitions } from "@apollo/persisted-query-lists";
import { createClient, type Client } from "graphql-ws";
import { useSyncExternalStore } from "react";

// Names and ids of the manifest this build wrote (scripts/operation-ids.mjs).
import operationIds from "../__generated__/operation-ids.json";
import { isUnauthenticated, report } from "./errors";

// The page is <prefix>/dashboard/: the API is <prefix>/graphql beside it.
export const graphqlUrl = new URL("../graphql", location.href);
const wsUrl = new URL(graphqlUrl);
wsUrl.protocol = graphqlUrl.protocol === "https:" ? "wss:" : "ws:";

// The live connection's state, for the header.
export type Live = "connecting" | "connected" | "reconnecting" | "idle";
let live: Live = "connecting";
const liveListeners = new Set<() => void>();
function setLive(next: Live): void {
  live = next;
  for (const listener of liveListeners) listener();
}
export function useLive(): Live {
  return useSyncExternalStore(
    (listener) => {
      liveListeners.add(listener);
      return () => liveListeners.delete(listener);
    },
    () => live,
  );
}

// A page of a Relay connection: the first page (no `after`) replaces what was read, a later one
// is appended; a job already listed (say, one the subscription prepended) is not listed twice.
interface Page {
  edges: Array<{ node: Reference }>;
  pageInfo: unknown;
}
const pages: FieldMergeFunction<Page, Page> = (existing, incoming, { args, readField }) => {
  if (!existing || !args?.after) return incoming;
  const listed = new Set(existing.edges.map((edge) => readField<string>("id", edge.node)));
  return {
    ...incoming,
    edges: [...existing.edges, ...incoming.edges.filter((edge) => !listed.has(readField<string>("id", edge.node)))],
  };
};

export interface Session {
  client: ApolloClient;
  dispose(): void;
}

export function createSession(credential: string | null, onUnauthenticated: () => void): Session {
  const authorization = credential ? `Bearer ${credential}` : null;

  const ws: Client = createClient({
    url: wsUrl.href,
    connectionParams: authorization ? { Authorization: authorization } : {},
    lazy: true,
    // Keep reconnecting while the page is open (a restarted API, a dropped network); active
    // subscriptions are sent again once connected. Not after the server ended the socket for an
    // ended credential (4403): signing in again makes a new client.
    retryAttempts: Number.POSITIVE_INFINITY,
    shouldRetry: (event) => !(event && typeof event === "object" && "code" in event && event.code === 4403),
    retryWait: (retries) => new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 500 * 2 ** retries) + Math.random() * 500)),
    on: {
      connecting: (reconnecting) => setLive(reconnecting ? "reconnecting" : "connecting"),
      connected: () => setLive("connected"),
      // A normal close is graphql-ws closing the socket no subscription uses (lazy mode).
      closed: (event) => setLive(event && typeof event === "object" && "code" in event && event.code === 1000 ? "idle" : "reconnecting"),
    },
  });

  const http = new PersistedQueryLink(
    generatePersistedQueryIdsFromManifest({ loadManifest: () => operationIds }),
  ).concat(new HttpLink({ uri: graphqlUrl.href, headers: authorization ? { Authorization: authorization } : {} }));

  const transport = ApolloLink.split(
    ({ query }) => {
      const definition = getMainDefinition(query);
      return definition.kind === "OperationDefinition" && definition.operation === "subscription";
    },
    new GraphQLWsLink(ws),
    http,
  );

  const errors = new ErrorLink(({ error, operation }) => {
    if (isUnauthenticated(error)) onUnauthenticated();
    else report(operation.operationName ?? "operation", error);
  });

  const client = new ApolloClient({
    link: errors.concat(transport),
    // A screen shown again starts from what the cache holds and reads the API once more: while
    // it was not shown, nothing kept its lists current (their subscriptions end with the screen).
    defaultOptions: { watchQuery: { fetchPolicy: "cache-and-network", nextFetchPolicy: "cache-first" } },
    // What the manifest holds is the operation first, then its fragments by name; codegen writes
    // a fragment before the fragments that use it. Sorted alike, the text a subscription sends
    // is the manifest's, which the server requires when it enforces trusted documents.
    documentTransform: new DocumentTransform(sortTopLevelDefinitions),
    cache: new InMemoryCache({
      typePolicies: {
        Query: {
          fields: {
            jobs: { keyArgs: ["filter"], merge: pages },
            workflows: { keyArgs: false, merge: pages },
          },
        },
        Job: { fields: { progress: { merge: true }, error: { merge: true } } },
        Schedule: { fields: { crontab: { merge: true } } },
        Queue: { keyFields: ["name"] },
        Worker: { keyFields: ["name"] },
        Viewer: { keyFields: [] },
      },
    }),
  });

  return {
    client,
    dispose() {
      client.stop();
      void ws.dispose();
    },
  };
}
