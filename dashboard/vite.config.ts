// The dashboard is built into the Python package (gql/http/static/dashboard) and committed, so
// the service needs no Node at run time. Relative asset URLs: the page is served at
// <prefix>/dashboard/, where the prefix is empty or the path JobQL is mounted at in a host app.
import { readFileSync } from "node:fs";

import { defineConfig, type Plugin } from "vite";

// The trusted-documents manifest `npm run manifest` wrote, next to the page it belongs to.
function manifest(): Plugin {
  return {
    name: "jobql-persisted-query-manifest",
    apply: "build",
    generateBundle() {
      this.emitFile({
        type: "asset",
        fileName: "persisted-query-manifest.json",
        source: readFileSync(new URL("./src/__generated__/persisted-query-manifest.json", import.meta.url), "utf8"),
      });
    },
  };
}

// @apollo/persisted-query-lists ships CommonJS only: its `require("graphql")` and
// `require("@apollo/client/core")` would keep the whole of both in the bundle (a required module
// keeps every export). It uses `print`, `ApolloLink` and `Observable`: required from here, the
// bundle keeps just those.
function narrowRequires(): Plugin {
  const shim = new URL("./src/lib/persisted-query-lists-deps.ts", import.meta.url).pathname;
  return {
    name: "jobql-narrow-requires",
    enforce: "pre",
    resolveId(source, importer) {
      if (importer?.includes("/node_modules/@apollo/persisted-query-lists/") && (source === "graphql" || source === "@apollo/client/core")) {
        return shim;
      }
      return null;
    },
  };
}

export default defineConfig({
  base: "./",
  plugins: [narrowRequires(), manifest()],
  build: {
    outDir: "../gql/http/static/dashboard",
    emptyOutDir: true,
    target: "es2022",
    // Served under `script-src 'self'`: no inline polyfill script.
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 400,
    rolldownOptions: {
      output: {
        // React and Apollo Client (with graphql, rxjs, graphql-ws) in chunks of their own, which
        // change only with their versions; what two or more screens share (hooks, the task form,
        // badges) in one chunk rather than a handful of tiny ones; each screen in its own.
        codeSplitting: {
          groups: [
            { name: "react", test: /node_modules[\\/](react|react-dom|scheduler)[\\/]/ },
            { name: "apollo", test: /node_modules[\\/](@apollo|@wry|graphql|graphql-ws|optimism|rxjs|tslib)[\\/]/ },
            {
              name: "shared",
              minShareCount: 2,
              includeDependenciesRecursively: false,
              test: /[\\/](src[\\/](components|lib)|node_modules[\\/]@apollo[\\/]client[\\/]react)[\\/]/,
            },
          ],
        },
      },
    },
  },
  server: {
    // `npm run dev`: the API of `make run` behind the dev server, HTTP and WebSocket.
    proxy: { "/graphql": { target: process.env.JOBQL_API ?? "http://127.0.0.1:8000", ws: true } },
  },
});
