// Apollo Client against JobQL with trusted documents: the manifest is the one
// @apollo/generate-persisted-query-manifest wrote from operations.graphql, and the client sends
// each operation by its manifest id (@apollo/persisted-query-lists), as a frontend team ships it.
// JOBQL_URL: the /graphql URL; JOBQL_MANIFEST: the manifest's path. Prints what it saw as JSON.
import { readFileSync } from "node:fs";

import { ApolloClient, HttpLink, InMemoryCache } from "@apollo/client";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { generatePersistedQueryIdsFromManifest } from "@apollo/persisted-query-lists";
import { parse } from "graphql";

const url = process.env.JOBQL_URL;
const manifest = JSON.parse(readFileSync(process.env.JOBQL_MANIFEST, "utf8"));
const sent = [];
const seen = {};

const operations = Object.fromEntries(
  parse(readFileSync(new URL("./operations.graphql", import.meta.url), "utf8")).definitions.map(
    (definition) => [definition.name.value, { kind: "Document", definitions: [definition] }],
  ),
);

async function recording(input, init = {}) {
  const body = init.body ? JSON.parse(init.body) : {};
  sent.push({ hasQuery: "query" in body, hasId: Boolean(body.extensions?.persistedQuery) });
  return fetch(input, init);
}

function until(observable) {
  return new Promise((resolve, reject) => {
    const values = [];
    observable.subscribe({
      next: (value) => values.push(value),
      error: reject,
      complete: () => resolve(values),
    });
  });
}

async function main() {
  const client = new ApolloClient({
    link: new PersistedQueryLink(
      generatePersistedQueryIdsFromManifest({ loadManifest: () => Promise.resolve(manifest) }),
    ).concat(new HttpLink({ uri: url, fetch: recording })),
    cache: new InMemoryCache(),
  });
  const tasks = await client.query({ query: operations.Tasks });
  seen.tasks = tasks.data.tasks.map((task) => task.name);
  const report = await client.mutate({
    mutation: operations.GenerateReport,
    variables: { input: { userId: 3, steps: 2, stepDelay: 0.05 } },
  });
  const updates = await until(
    client.subscribe({
      query: operations.JobUpdates,
      variables: { id: report.data.generateReport.id },
    }),
  );
  seen.multipart = updates.map((update) => update.data.job.state);
  seen.sent = sent;

  // A query the frontend never shipped, sent as plain text: refused before it runs.
  const plain = new ApolloClient({ link: new HttpLink({ uri: url }), cache: new InMemoryCache() });
  const foreign = await plain
    .query({ query: parse("query Foreign { tasks { name description } }") })
    .catch((error) => ({ error }));
  seen.foreign = foreign.error?.errors?.[0]?.extensions?.code ?? null;
  console.log(JSON.stringify(seen));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
