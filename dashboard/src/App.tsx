import { lazy, Suspense, useCallback, useEffect, useMemo, useState } from "react";
import { ApolloProvider, useQuery } from "@apollo/client/react";

import { ViewerDocument } from "./__generated__/graphql";
import { ErrorBanner } from "./components/ErrorBanner";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { createSession, useLive } from "./lib/apollo";
import { readCredential, saveCredential } from "./lib/credential";
import { dismiss } from "./lib/errors";
import { parse, useHash, type Route } from "./lib/route";
import { ViewerContext, type Viewer } from "./lib/viewer";
import { SignIn } from "./SignIn";

// One chunk per screen, loaded when first shown.
const JobsScreen = lazy(() => import("./screens/JobsScreen"));
const JobScreen = lazy(() => import("./screens/JobScreen"));
const WorkflowsScreen = lazy(() => import("./screens/WorkflowsScreen"));
const WorkflowScreen = lazy(() => import("./screens/WorkflowScreen"));
const SchedulesScreen = lazy(() => import("./screens/SchedulesScreen"));
const WorkersScreen = lazy(() => import("./screens/WorkersScreen"));
const DeadLettersScreen = lazy(() => import("./screens/DeadLettersScreen"));

function start(credential: string | null, setSignIn: (value: "asked" | "refused") => void) {
  const unauthenticated = () => {
    // A refused credential is not kept: a reload asks again instead of sending it again.
    if (credential) saveCredential(null);
    setSignIn(credential ? "refused" : "asked");
  };
  return { credential, session: createSession(credential, unauthenticated) };
}

const NAV = [
  { screen: "jobs", label: "Jobs", hash: "#/jobs", also: "job" },
  { screen: "workflows", label: "Workflows", hash: "#/workflows", also: "workflow" },
  { screen: "schedules", label: "Schedules", hash: "#/schedules", also: "" },
  { screen: "workers", label: "Workers & queues", hash: "#/workers", also: "" },
  { screen: "dead-letters", label: "Dead letters", hash: "#/dead-letters", also: "" },
] as const;

export function App() {
  const [signIn, setSignIn] = useState<"no" | "asked" | "refused">("no");
  // A new client per credential (its cache and socket go with it); the previous one is stopped
  // where the credential changes, not in an effect, so React's strict double effects keep it.
  const [{ credential, session }, setState] = useState(() => start(readCredential(), setSignIn));

  const change = useCallback(
    (next: string | null) => {
      session.dispose();
      saveCredential(next);
      dismiss();
      setSignIn("no");
      setState(start(next, setSignIn));
    },
    [session],
  );

  if (signIn !== "no") return <SignIn refused={signIn === "refused"} onSignIn={change} />;
  return (
    <ApolloProvider client={session.client}>
      <Shell signedIn={credential !== null} onSignOut={() => change(null)} />
    </ApolloProvider>
  );
}

function Shell({ signedIn, onSignOut }: { signedIn: boolean; onSignOut(): void }) {
  const hash = useHash();
  const route = parse(hash);
  // The banner shows what went wrong on this screen: another screen starts without it.
  useEffect(() => dismiss(), [hash]);
  const { data, loading } = useQuery(ViewerDocument);
  const live = useLive();
  // Until the server has `viewer`, or when it errs (the banner says why), the dashboard still
  // works: as a caller who is not an admin.
  const viewer: Viewer = useMemo(
    () => ({ owner: data?.viewer.owner ?? null, admin: data?.viewer.admin ?? false }),
    [data],
  );
  const current = route.screen === "job" ? "jobs" : route.screen === "workflow" ? "workflows" : route.screen;

  return (
    <ViewerContext.Provider value={viewer}>
      <div className="layout">
        <nav className="sidebar">
          <a className="brand" href="#/jobs">
            JobQL
          </a>
          {NAV.map((item) => (
            <a
              key={item.screen}
              href={item.hash}
              data-testid={`nav-${item.screen}`}
              className={current === item.screen ? "active" : undefined}
              aria-current={current === item.screen ? "page" : undefined}
            >
              {item.label}
            </a>
          ))}
          <a className="sidebar-foot" href="../graphql" target="_blank" rel="noreferrer">
            GraphiQL ↗
          </a>
        </nav>
        <div className="main">
          <header className="topbar">
            <span className={`live live-${live}`} data-testid="live-status" title="Subscriptions over WebSocket">
              {live === "connected" ? "live" : live === "idle" ? "no live view open" : live}
            </span>
            <span className="spacer" />
            {loading ? (
              <span className="muted">signing in…</span>
            ) : (
              <span className="viewer">
                <span data-testid="viewer-owner">{viewer.owner ?? "unknown"}</span>
                {viewer.admin && (
                  <span className="badge admin" data-testid="viewer-admin">
                    admin
                  </span>
                )}
              </span>
            )}
            {signedIn && (
              <button type="button" data-testid="signout" onClick={onSignOut}>
                Sign out
              </button>
            )}
          </header>
          <ErrorBanner />
          <main className="content">
            {loading ? (
              // The screens ask nothing before the API has said who the caller is.
              <p className="muted">Signing in…</p>
            ) : (
              <ErrorBoundary key={route.screen}>
                <Suspense fallback={<p className="muted">Loading…</p>}>
                  <Screen route={route} />
                </Suspense>
              </ErrorBoundary>
            )}
          </main>
        </div>
      </div>
    </ViewerContext.Provider>
  );
}

function Screen({ route }: { route: Route }) {
  switch (route.screen) {
    case "jobs":
      return <JobsScreen />;
    case "job":
      return <JobScreen id={route.id} />;
    case "workflows":
      return <WorkflowsScreen />;
    case "workflow":
      return <WorkflowScreen id={route.id} />;
    case "schedules":
      return <SchedulesScreen highlight={route.id} />;
    case "workers":
      return <WorkersScreen />;
    case "dead-letters":
      return <DeadLettersScreen />;
  }
}
