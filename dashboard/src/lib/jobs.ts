// The `jobs` subscription, as the screens use it: its events are written to the cache in
// batches (one cache broadcast and one render per batch, however many jobs changed), and jobs
// the lists do not hold yet are placed where they belong.
import { useEffect, useRef } from "react";
import type { ApolloCache, Reference } from "@apollo/client";
import { useApolloClient, useSubscription } from "@apollo/client/react";

import { JobRowFragmentDoc, JobsLiveDocument, type JobFilter, type JobRowFragment } from "../__generated__/graphql";

export const PAGE = 100;

export const STATES = ["PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"] as const;
export const RUNNING = new Set(["STARTED", "PROGRESS"]);

const BATCH_MS = 100;

// Writes the jobs that changed since the last batch (each once, as of its latest event) to the
// cache, where every list and screen holding them sees it, places new ones in the cached job
// lists they match, then calls `onBatch` with them.
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
        place(cache, jobs);
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

interface StoredPage {
  edges?: Array<{ __typename?: string; cursor?: string; node: Reference }>;
  pageInfo?: { hasNextPage?: boolean };
}

// The filter a cached `jobs` list was read with, from its store field name (the type policy
// keys the field by its filter: `jobs:{"filter":{...}}`); undefined when it does not read.
function filterOf(storeFieldName: string): JobFilter | null | undefined {
  try {
    const args = JSON.parse(storeFieldName.slice(storeFieldName.indexOf(":") + 1)) as { filter?: JobFilter | null };
    return args.filter ?? null;
  } catch {
    return undefined;
  }
}

function matches(filter: JobFilter | null, job: JobRowFragment): boolean {
  if (!filter) return true;
  if (filter.states && !filter.states.includes(job.state)) return false;
  if (filter.task && filter.task !== job.task) return false;
  const created = Date.parse(job.createdAt);
  if (filter.createdAfter && created <= Date.parse(filter.createdAfter)) return false;
  if (filter.createdBefore && created >= Date.parse(filter.createdBefore)) return false;
  return true;
}

// A job no cached list holds yet goes into each list whose filter it matches, where its creation
// time puts it, newest first: at the top for a new job; further down for an older one that now
// matches (a state filter); not at all when it belongs to a page not read yet. Jobs a list holds
// need nothing: the cache normalizes them by id, so their rows show the change. The lists are
// changed in place (references, not a rewrite of every listed job).
function place(cache: ApolloCache, jobs: JobRowFragment[]): void {
  const newest = [...jobs].sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
  cache.modify({
    fields: {
      jobs(value, { storeFieldName, readField, toReference, isReference }) {
        if (isReference(value)) return value;
        const existing = value as StoredPage;
        const filter = filterOf(storeFieldName);
        if (filter === undefined || !existing?.edges) return value;
        const candidates = newest.filter((job) => matches(filter, job));
        if (!candidates.length) return value;
        const listed = new Set(existing.edges.map((edge) => readField<string>("id", edge.node)));
        let edges = existing.edges;
        for (const job of candidates.reverse()) {
          if (listed.has(job.id)) continue;
          let at = edges.findIndex((edge) => (readField<string>("createdAt", edge.node) ?? "") < job.createdAt);
          if (at < 0) {
            if (existing.pageInfo?.hasNextPage) continue;
            at = edges.length;
          }
          const node = toReference(job);
          if (!node) continue;
          edges = [...edges.slice(0, at), { __typename: "JobEdge", cursor: `live:${job.id}`, node }, ...edges.slice(at)];
          listed.add(job.id);
        }
        return edges === existing.edges ? value : ({ ...existing, edges } as typeof value);
      },
    },
  });
}
