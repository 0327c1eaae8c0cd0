// JobQL's GraphiQL: served by JobQL itself, with the README's tour as the first tab, the
// Explorer plugin (build an operation by ticking fields) and a Headers tab whose values
// also go to graphql-ws's connection_init, so a token there authenticates subscriptions.
(function () {
  "use strict";

  var TOUR = [
    "# Welcome to JobQL. Run one operation at a time with the ▶ button (it asks which).",
    "# With authentication on, put your token in the Headers tab below:",
    '#   { "Authorization": "Bearer <token>" }',
    "# Open the Explorer (the compass on the left) to build operations by ticking fields.",
    "",
    "# 1. Start a job: a typed mutation, validated against the task's input model.",
    "mutation StartReport {",
    "  generateReport(input: { userId: 42, steps: 50 }) { id state sequence }",
    "}",
    "",
    "# 2. Read it (paste the id): its state, progress, result or error.",
    'query ReadJob($id: ID! = "paste-the-id") {',
    "  job(id: $id) { state done progress { current total percent message } result error { type message } }",
    "}",
    "",
    "# 3. Watch it live: the job now, then every change, until its final state.",
    'subscription WatchJob($id: ID! = "paste-the-id") {',
    "  job(id: $id) { state sequence progress { percent message } result }",
    "}",
    "",
    "# 4. What you have run, newest first (a Relay connection).",
    "query RecentJobs {",
    "  jobs(first: 10) { edges { cursor node { id task state createdAt } } pageInfo { hasNextPage endCursor } }",
    "}",
    "",
    "# 5. Every task you can start, with its input's JSON Schema.",
    "query Tasks {",
    "  tasks { name mutation description inputSchema }",
    "}",
    "",
  ].join("\n");

  var url = window.location.href.split(/[?#]/)[0];
  var subscriptionUrl = url.replace(/^http/, "ws");
  // Marked as GraphiQL's (a header, and a field of graphql-ws's connection_init): with trusted
  // documents on, JobQL lets this page's own operations through in development only.
  var mark = { "x-jobql-client": "graphiql" };
  var fetcher = GraphiQL.createFetcher({
    url: url,
    subscriptionUrl: subscriptionUrl,
    headers: mark,
    wsConnectionParams: mark,
  });
  var explorer = GraphiQLPluginExplorer.explorerPlugin();

  function JobQLGraphiQL() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: TOUR,
      plugins: [explorer],
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: "headers",
    });
  }

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(JobQLGraphiQL),
  );
})();
