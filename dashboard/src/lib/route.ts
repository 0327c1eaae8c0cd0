import { useSyncExternalStore } from "react";

export type Route =
  | { screen: "jobs" }
  | { screen: "job"; id: string }
  | { screen: "workflows" }
  | { screen: "workflow"; id: string }
  | { screen: "schedules"; id?: string }
  | { screen: "workers" }
  | { screen: "dead-letters" };

// Hash routes (#/jobs/<id>), so the server serves one page whatever the screen.
export function parse(hash: string): Route {
  const [first, second] = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  switch (first) {
    case "jobs":
      return second ? { screen: "job", id: second } : { screen: "jobs" };
    case "workflows":
      return second ? { screen: "workflow", id: second } : { screen: "workflows" };
    case "schedules":
      return second ? { screen: "schedules", id: second } : { screen: "schedules" };
    case "workers":
      return { screen: "workers" };
    case "dead-letters":
      return { screen: "dead-letters" };
    default:
      return { screen: "jobs" };
  }
}

export const href = {
  job: (id: string) => `#/jobs/${encodeURIComponent(id)}`,
  workflow: (id: string) => `#/workflows/${encodeURIComponent(id)}`,
  schedule: (id: string) => `#/schedules/${encodeURIComponent(id)}`,
};

export function navigate(hash: string): void {
  location.hash = hash;
}

function subscribe(listener: () => void): () => void {
  window.addEventListener("hashchange", listener);
  return () => window.removeEventListener("hashchange", listener);
}

export function useHash(): string {
  return useSyncExternalStore(subscribe, () => location.hash);
}
