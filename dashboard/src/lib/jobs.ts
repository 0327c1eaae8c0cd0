// The `jobs` subscription, as the screens use it: its events are written to the cache in
// batches (one cache broadcast and one render per batch, however many jobs changed), and jobs
// the lists do not hold yet are placed where they belong.
import { useEffect, useRef } from "react";
import type { ApolloCache } from "@apollo/client";
import { useApolloClient, useSubscription } from "@apollo/client/react";

import { JobRowFragmentDoc, JobsDocument, JobsLiveDocument, type JobFilter, type JobRowFragment } from "../__generated__/graphql";

export const PAGE = 100;

export const STATES = ["PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"] as const;
export const RUNNING = new Set(["STARTED", "PROGRESS"]);

const BATCH_MS = 100;

// Calls `onBatch` with the jobs that changed since the last batch (each once, as of its latest
// event) after writing them to the cache, where every list and screen holding them sees it.
export function useJobStream(filter: JobFilter | null, onBatch?: (jobs: JobRowFragment[], cache: ApolloCache) => void): void {
  const client = useApolloClient();
  const pending = useRef(new Map<string, JobRowFragment>());
  const timer = useRef<ReturnType<typeof setTimeout> | null>(null);
  const callback = useRef(onBatch);
  callback.current = onBatch;

  useEffect(
    () => () => {
      if (timer.current) clearTimeout(timer.current);
      timer.current = null;
    },
    [],
  );

  function flush() {
    timer.current = null;
    const jobs = [...pending.current.values()];
    pending.current.clear();
    client.cache.batch({
      update(cache) {
        for (const job of jobs) {
          // An event older than what the cache holds (the job's own subscription may be ahead)
          // does not take it back.
          const held = cache.readFragment({ fragment: JobRowFragmentDoc, id: cache.identify(job) });
          if (!held || held.sequence <= job.sequence) cache.writeFragment({ fragment: JobRowFragmentDoc, data: job });
        }
        callback.current?.(jobs, cache);
      },
    });
  }

  useSubscription(JobsLiveDocument, {
    variables: { filter },
    fetchPolicy: "no-cache",
    onData: ({ data }) => {
      const job = data.data?.jobs;
      if (!job) return;
      const seen = pending.current.get(job.id);
      if (!seen || seen.sequence <= job.sequence) pending.current.set(job.id, job);
      timer.current ??= setTimeout(flush, BATCH_MS);
    },
  });
}

// New jobs go where their creation time puts them in a list the cache holds, newest first: at
// the top for a new job; further down for an older one that now matches (a state filter); not
// at all when it belongs to a page not read yet. Listed jobs need nothing: the cache normalizes
// them by id, so their rows show the change.
export function place(cache: ApolloCache, filter: JobFilter, jobs: JobRowFragment[]): void {
  const matching = jobs.filter((job) => !filter.states || filter.states.includes(job.state));
  if (!matching.length) return;
  cache.updateQuery({ query: JobsDocument, variables: { first: PAGE, filter } }, (current) => {
    if (!current) return undefined;
    const listed = new Set(current.jobs.edges.map((edge) => edge.node.id));
    let edges = current.jobs.edges;
    for (const job of matching.sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1))) {
      if (listed.has(job.id)) continue;
      let at = edges.findIndex((edge) => edge.node.createdAt < job.createdAt);
      if (at < 0) {
        if (current.jobs.pageInfo.hasNextPage) continue;
        at = edges.length;
      }
      edges = [...edges.slice(0, at), { __typename: "JobEdge" as const, cursor: `live:${job.id}`, node: job }, ...edges.slice(at)];
    }
    return edges === current.jobs.edges ? undefined : { ...current, jobs: { ...current.jobs, edges } };
  });
}
