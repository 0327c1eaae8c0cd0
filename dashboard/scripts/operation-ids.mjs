// After generate-persisted-query-manifest: checks that what Apollo Client sends for each typed
// document the app imports is the manifest's text, byte for byte (the server matches a
// subscription's full text against the manifest, and an operation sent by id runs the manifest's
// text), then writes the operations' names and ids alone for the app to import, so the bundle
// carries the ids without a second copy of every operation's text.
import { readFileSync, writeFileSync } from "node:fs";

import { ApolloClient, ApolloLink, DocumentTransform, InMemoryCache } from "@apollo/client";
import { sortTopLevelDefinitions } from "@apollo/persisted-query-lists";
import { print } from "graphql";
import { Observable } from "rxjs";

const here = new URL("../src/__generated__/", import.meta.url);
const manifest = JSON.parse(readFileSync(new URL("persisted-query-manifest.json", here), "utf8"));
const generated = readFileSync(new URL("graphql.ts", here), "utf8");

// The typed documents, as codegen wrote them: one JSON literal per line.
const documents = [...generated.matchAll(/^export const (\w+)Document = (\{.*\}) as unknown as DocumentNode<.*$/gm)]
  .map(([, name, json]) => ({ name, document: JSON.parse(json) }))
  .filter(({ document }) => document.definitions.some((d) => d.kind === "OperationDefinition"));

const sent = new Map();
const client = new ApolloClient({
  cache: new InMemoryCache(),
  // As src/apollo.ts: codegen puts a fragment before the fragments that use it, the manifest
  // puts the operation first and then the fragments by name; the app sorts the same way.
  documentTransform: new DocumentTransform(sortTopLevelDefinitions),
  link: new ApolloLink((operation) => {
    // What GraphQLWsLink and HttpLink put in the request: print of the transformed document.
    sent.set(operation.operationName, print(operation.query));
    return new Observable((observer) => {
      observer.next({ data: null });
      observer.complete();
    });
  }),
});

const problems = [];
for (const { name, document } of documents) {
  const kind = document.definitions.find((d) => d.kind === "OperationDefinition").operation;
  if (kind === "query") await client.query({ query: document, fetchPolicy: "no-cache" }).catch(() => {});
  if (kind === "mutation") await client.mutate({ mutation: document }).catch(() => {});
  if (kind === "subscription") {
    await new Promise((resolve) => client.subscribe({ query: document }).subscribe({ complete: resolve, error: resolve }));
  }
  const entry = manifest.operations.find((operation) => operation.name === name);
  if (!entry) problems.push(`${name}: not in the manifest`);
  else if (sent.get(name) !== entry.body) problems.push(`${name}: the text Apollo sends differs from the manifest's`);
}
for (const entry of manifest.operations) {
  if (!documents.some(({ name }) => name === entry.name)) problems.push(`${entry.name}: in the manifest, not in the app`);
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
const ids = { operations: manifest.operations.map(({ id, name }) => ({ id, name })) };
writeFileSync(new URL("operation-ids.json", here), JSON.stringify(ids, null, 2) + "\n");
console.log(`${documents.length} operations: Apollo sends each as the manifest has it`);
