// Drives a running JobQL through Apollo Client and prints what it saw as one JSON object.
// JOBQL_URL: the /graphql URL; JOBQL_TOKEN: a bearer token when authentication is on.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

import { ApolloClient, ApolloLink, HttpLink, InMemoryCache } from "@apollo/client";
import { CombinedGraphQLErrors } from "@apollo/client/errors";
import { BatchHttpLink } from "@apollo/client/link/batch-http";
import { SetContextLink } from "@apollo/client/link/context";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { ApolloProvider } from "@apollo/client/react";
import { parse } from "graphql";
import { createClient } from "graphql-ws";
import { createElement as h } from "react";
import TestRenderer, { act } from "react-test-renderer";
import WebSocket from "ws";

import { createJobQLClient } from "./src/apollo.mjs";
import { JobProgress } from "./src/progress.mjs";

const url = process.env.JOBQL_URL;
const token = process.env.JOBQL_TOKEN || null;
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const seen = {};

const operations = Object.fromEntries(
  parse(readFileSync(new URL("./operations.graphql", import.meta.url), "utf8")).definitions.map(
    (definition) => [definition.name.value, { kind: "Document", definitions: [definition] }],
  ),
);

function until(observable, stop = () => false) {
  // Every value of an observable, to its end (or the first value `stop` accepts).
  return new Promise((resolve, reject) => {
    const values = [];
    const subscription = observable.subscribe({
      next: (value) => {
        values.push(value);
        if (stop(value)) {
          subscription.unsubscribe();
          resolve(values);
        }
      },
      error: reject,
      complete: () => resolve(values),
    });
  });
}

function recordingFetch(log) {
  return async (input, init = {}) => {
    const target = new URL(typeof input === "string" ? input : input.url);
    const body = init.body ? JSON.parse(init.body) : null;
    const sent = body ?? Object.fromEntries(target.searchParams);
    log.push({ method: init.method ?? "GET", hasQuery: JSON.stringify(sent).includes('"query"') });
    return fetch(input, init);
  };
}

function withToken(link) {
  return new SetContextLink(({ headers }) => ({ headers: { ...headers, ...authHeaders } })).concat(
    link,
  );
}

const sha256 = (text) => createHash("sha256").update(text).digest("hex");

async function main() {
  const client = createJobQLClient({ url, getToken: () => token, webSocketImpl: WebSocket });

  // Queries and mutations over HTTP.
  const tasks = await client.query({ query: operations.Tasks });
  seen.tasks = tasks.data.tasks.map((task) => task.name);
  const report = await client.mutate({
    mutation: operations.GenerateReport,
    variables: { input: { userId: 7, steps: 4, stepDelay: 0.05 } },
  });
  const reportJob = report.data.generateReport;
  seen.generateReport = { id: reportJob.id, state: reportJob.state, createdAt: reportJob.createdAt };

  // The query's cached Job is the one the subscription updates: one Job:<id> in the cache.
  const watched = client.watchQuery({ query: operations.JobById, variables: { id: reportJob.id } });
  const fromQuery = [];
  const watching = watched.subscribe(({ data }) => data?.job && fromQuery.push(data.job.state));
  const updates = await until(
    client.subscribe({ query: operations.JobUpdates, variables: { id: reportJob.id } }),
  );
  seen.graphqlWs = updates.map((update) => update.data.job.state);
  seen.finishedAt = updates.at(-1).data.job.finishedAt;
  seen.result = updates.at(-1).data.job.result;
  await new Promise((resolve) => setTimeout(resolve, 50));
  watching.unsubscribe();
  seen.watchedQuery = fromQuery;
  seen.cachedState = client.cache.extract()[`Job:${reportJob.id}`]?.state;

  // The generic mutation, watched over Apollo's multipart HTTP subscriptions.
  const enqueued = await client.mutate({
    mutation: operations.Enqueue,
    variables: { task: "process_data", input: { data: { values: [1, 2.5, "x"] }, delay: 0.2 } },
  });
  seen.enqueue = enqueued.data.enqueue.state;
  const overHttp = new ApolloClient({
    link: withToken(new HttpLink({ uri: url })),
    cache: new InMemoryCache(),
  });
  const multipart = await until(
    overHttp.subscribe({ query: operations.JobUpdates, variables: { id: enqueued.data.enqueue.id } }),
  );
  seen.multipart = multipart.map((update) => update.data.job.state);
  seen.multipartResult = multipart.at(-1).data.job.result;

  // A bad input: BAD_USER_INPUT with the field's path, as a GraphQL error.
  const bad = await client
    .mutate({ mutation: operations.GenerateReport, variables: { input: { userId: 7, steps: 0 } } })
    .catch((error) => ({ error }));
  seen.badInput = {
    combined: CombinedGraphQLErrors.is(bad.error),
    code: bad.error?.errors?.[0]?.extensions?.code,
    message: bad.error?.errors?.[0]?.message,
  };

  // Automatic persisted queries: hashed GET, PERSISTED_QUERY_NOT_FOUND, then the full query.
  const apq = [];
  const persistedClient = () =>
    new ApolloClient({
      link: withToken(
        new PersistedQueryLink({ sha256, useGETForHashedQueries: true }).concat(
          new HttpLink({ uri: url, fetch: recordingFetch(apq), headers: { "apollo-require-preflight": "true" } }),
        ),
      ),
      cache: new InMemoryCache(),
    });
  const first = await persistedClient().query({ query: operations.Tasks });
  const again = await persistedClient().query({ query: operations.Tasks });
  seen.apq = { requests: apq, answered: first.data.tasks.length === again.data.tasks.length };

  // Batching: two queries in one POST.
  const batched = [];
  const batchClient = new ApolloClient({
    link: withToken(new BatchHttpLink({ uri: url, batchMax: 5, fetch: recordingFetch(batched) })),
    cache: new InMemoryCache(),
  });
  const [one, two] = await Promise.all([
    batchClient.query({ query: operations.Tasks }),
    batchClient.query({ query: operations.JobById, variables: { id: reportJob.id } }),
  ]);
  seen.batch = { posts: batched.length, tasks: one.data.tasks.length, job: two.data.job.state };

  // The README's React component, rendered while its job runs.
  const progressJob = (
    await client.mutate({
      mutation: operations.GenerateReport,
      variables: { input: { userId: 8, steps: 5, stepDelay: 0.1 } },
    })
  ).data.generateReport.id;
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(ApolloProvider, { client }, h(JobProgress, { id: progressJob })));
  });
  const rendered = [];
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    await act(() => new Promise((resolve) => setTimeout(resolve, 50)));
    const text = renderer.root.findByType("span").children.join("");
    const value = renderer.root.findByType("progress").props.value;
    if (rendered.at(-1)?.text !== text) rendered.push({ text, value });
    if (text.startsWith("SUCCESS")) break;
  }
  renderer.unmount();
  seen.react = rendered;

  // Without the token, graphql-ws is refused at connection_init.
  if (token) {
    const anonymous = createClient({ url: url.replace(/^http/, "ws"), webSocketImpl: WebSocket, retryAttempts: 0 });
    seen.refused = await new Promise((resolve) => {
      anonymous.subscribe(
        { query: "subscription { jobs { id } }" },
        { next: () => resolve("accepted"), error: (e) => resolve(e.code ?? String(e)), complete: () => resolve("completed") },
      );
    });
    await anonymous.dispose();
  }

  client.stop();
  overHttp.stop();
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(0);
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n${JSON.stringify(seen)}\n`);
  process.exit(1);
});
