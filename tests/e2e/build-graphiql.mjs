// Copies GraphiQL's built browser files, at the versions pinned in package-lock.json, into
// gql/http/static/graphiql, so JobQL serves GraphiQL itself: no CDN, works offline and under a
// strict Content-Security-Policy. Run `npm run build-graphiql` after changing a version.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "../../gql/http/static/graphiql");
const files = {
  "react.production.min.js": "react/umd/react.production.min.js",
  "react-dom.production.min.js": "react-dom/umd/react-dom.production.min.js",
  "graphiql.min.js": "graphiql/graphiql.min.js",
  "graphiql.min.css": "graphiql/graphiql.min.css",
  "plugin-explorer.umd.js": "@graphiql/plugin-explorer/dist/index.umd.js",
  "plugin-explorer.css": "@graphiql/plugin-explorer/dist/style.css",
};
mkdirSync(target, { recursive: true });
for (const [name, source] of Object.entries(files)) {
  const text = readFileSync(join(here, "node_modules", source), "utf8");
  // The source maps are not shipped: drop the comments that would make browsers ask for them.
  writeFileSync(join(target, name), text.replace(/\n?\/[/*]# sourceMappingURL=\S+(\s*\*\/)?\s*$/, "\n"));
}
const versions = Object.fromEntries(
  ["graphiql", "@graphiql/plugin-explorer", "react", "react-dom"].map((name) => [
    name,
    JSON.parse(readFileSync(join(here, "node_modules", name, "package.json"), "utf8")).version,
  ]),
);
writeFileSync(join(target, "VERSIONS.json"), JSON.stringify(versions, null, 2) + "\n");
console.log(`GraphiQL assets written to gql/http/static/graphiql: ${JSON.stringify(versions)}`);
