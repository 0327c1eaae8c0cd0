// The start screen: every job you may see, newest first, live. The first page and the next ones
// (infinite scroll) come from `jobs`; the `jobs` subscription then moves rows in place and adds
// new jobs at the top.
import { lazy, memo, Suspense, useCallback, useDeferredValue, useEffect, useMemo, useRef, useState } from "react";
import { useApolloClient, useMutation, useQuery } from "@apollo/client/react";

import {
  CancelJobDocument,
  CancelJobsDocument,
  EnqueueDocument,
  JobsDocument,
  RetryJobDocument,
  RetryJobsDocument,
  TasksDocument,
  type JobFilter,
  type JobRowFragment,
  type JobState,
} from "../__generated__/graphql";
import { ProgressBar } from "../components/ProgressBar";
import { StateBadge } from "../components/StateBadge";
import { TaskInputForm } from "../components/TaskInputForm";
import { between, shortId, time } from "../lib/format";
import { PAGE, RUNNING, STATES, useJobStream } from "../lib/jobs";
import { useReadyWhen } from "../lib/ready";
import { href, navigate } from "../lib/route";

const Charts = lazy(() => import("./Charts"));

const WINDOWS = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000, all: 0 } as const;
type Window = keyof typeof WINDOWS;
const WINDOW_LABELS: Record<Window, string> = { "15m": "Last 15 min", "1h": "Last hour", "24h": "Last 24 h", all: "All time" };

export default function JobsScreen() {
  const client = useApolloClient();
  const [states, setStates] = useState<JobState[]>([]);
  const [task, setTask] = useState("");
  const [period, setPeriod] = useState<{ key: Window; since: string | null }>({ key: "all", since: null });

  const filter = useMemo<JobFilter>(
    () => ({ states: states.length ? states : null, task: task || null, createdAfter: period.since }),
    [states, task, period.since],
  );
  // The subscription is not narrowed by state: a listed job that leaves the chosen states
  // still shows its new state, and the states are checked before a job is added.
  const liveFilter = useMemo<JobFilter>(() => ({ task: task || null, createdAfter: period.since }), [task, period.since]);

  const tasks = useQuery(TasksDocument);
  const { data, fetchMore, loading } = useQuery(JobsDocument, {
    variables: { first: PAGE, filter },
    notifyOnNetworkStatusChange: true,
  });
  useJobStream(liveFilter);
  useReadyWhen(Boolean(data));

  const jobs = useMemo(() => data?.jobs.edges.map((edge) => edge.node) ?? [], [data]);
  // The rows render at low priority, in slices React can interrupt: with a thousand rows and
  // updates flowing, scrolling and typing stay responsive.
  const rows = useDeferredValue(jobs);
  const pageInfo = data?.jobs.pageInfo;

  // Infinite scroll: the next page when the last row's sentinel comes near the viewport.
  const sentinel = useRef<HTMLTableRowElement>(null);
  const fetching = useRef(false);
  useEffect(() => {
    const element = sentinel.current;
    if (!element || !pageInfo?.hasNextPage || !pageInfo.endCursor) return;
    const after = pageInfo.endCursor;
    const observer = new IntersectionObserver(
      (entries) => {
        if (!entries.some((entry) => entry.isIntersecting) || fetching.current) return;
        fetching.current = true;
        void fetchMore({ variables: { after } }).finally(() => {
          fetching.current = false;
        });
      },
      { rootMargin: "600px 0px" },
    );
    observer.observe(element);
    return () => observer.disconnect();
  }, [pageInfo?.hasNextPage, pageInfo?.endCursor, fetchMore]);

  // Selection, kept to the ids still listed.
  const [selected, setSelected] = useState<ReadonlySet<string>>(new Set());
  const toggle = useCallback((id: string) => {
    setSelected((current) => {
      const next = new Set(current);
      if (!next.delete(id)) next.add(id);
      return next;
    });
  }, []);
  const allSelected = jobs.length > 0 && jobs.every((job) => selected.has(job.id));

  const [terminate, setTerminate] = useState(false);
  const [bulk, setBulk] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [confirmCancelAll, setConfirmCancelAll] = useState(false);

  async function onEach(label: string, ids: string[], act: (id: string) => Promise<unknown>) {
    setBusy(true);
    let done = 0;
    let failed = 0;
    const queue = [...ids];
    const workers = Array.from({ length: Math.min(6, queue.length) }, async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        try {
          await act(id);
          done++;
        } catch {
          failed++;
        }
        setBulk(`${label}: ${done} of ${ids.length}${failed ? `, ${failed} refused` : ""}`);
      }
    });
    await Promise.all(workers);
    setBulk(`${label}: ${done} done${failed ? `, ${failed} refused (see the errors above)` : ""}`);
    setSelected(new Set());
    setBusy(false);
  }

  const retrySelected = () =>
    onEach("Retry", [...selected], (id) => client.mutate({ mutation: RetryJobDocument, variables: { id } }));
  const cancelSelected = () =>
    onEach("Cancel", [...selected], (id) => client.mutate({ mutation: CancelJobDocument, variables: { id, terminate } }));

  // retryJobs and cancelJobs act on at most 500 jobs a call: follow the cursor until none is left.
  async function allMatching(kind: "retry" | "cancel") {
    setBusy(true);
    let after: string | null = null;
    let acted = 0;
    let skipped = 0;
    let examined = 0;
    const verb = kind === "retry" ? "Retried" : "Cancelled";
    try {
      do {
        let page: { examined: number; acted: number; skipped: number; cursor: string | null };
        if (kind === "retry") {
          const result = await client.mutate({ mutation: RetryJobsDocument, variables: { filter, after } });
          const r = result.data!.retryJobs;
          page = { examined: r.examined, acted: r.retriedCount, skipped: r.skippedCount, cursor: r.cursor };
        } else {
          const result = await client.mutate({ mutation: CancelJobsDocument, variables: { filter, terminate, after } });
          const r = result.data!.cancelJobs;
          page = { examined: r.examined, acted: r.cancelledCount, skipped: r.skippedCount, cursor: r.cursor };
        }
        examined += page.examined;
        acted += page.acted;
        skipped += page.skipped;
        after = page.examined > 0 ? page.cursor : null;
        setBulk(`${verb} ${acted}, skipped ${skipped} of ${examined} matching${after ? "…" : ""}`);
      } while (after);
    } catch {
      setBulk(`${verb} ${acted}, skipped ${skipped} of ${examined} matching; then an error stopped it`);
    } finally {
      setBusy(false);
      setConfirmCancelAll(false);
    }
  }

  function setState(state: JobState, on: boolean) {
    setStates((current) => STATES.filter((s) => (s === state ? on : current.includes(s))));
  }

  return (
    <div className="jobs-screen">
      <div className="jobs-top">
        <section className="card new-job">
          <h2>New job</h2>
          {tasks.data ? <NewJob tasks={tasks.data.tasks} /> : <p className="muted">Loading tasks…</p>}
        </section>
        <section className="card charts-card">
          <Suspense fallback={<p className="muted">Loading charts…</p>}>
            <Charts />
          </Suspense>
        </section>
      </div>

      <section className="card">
        <div className="toolbar">
          <fieldset className="states">
            <legend>State</legend>
            {STATES.map((state) => (
              <label key={state} className={`chip state-${state}${states.includes(state) ? " on" : ""}`}>
                <input
                  type="checkbox"
                  data-testid={`filter-state-${state}`}
                  checked={states.includes(state)}
                  onChange={(e) => setState(state, e.target.checked)}
                />
                {state}
              </label>
            ))}
          </fieldset>
          <label className="inline">
            Task
            <select data-testid="filter-task" value={task} onChange={(e) => setTask(e.target.value)}>
              <option value="">all</option>
              {tasks.data?.tasks.map((t) => (
                <option key={t.name}>{t.name}</option>
              ))}
            </select>
          </label>
          <label className="inline">
            Created
            <select
              data-testid="filter-window"
              value={period.key}
              onChange={(e) => {
                const key = e.target.value as Window;
                setPeriod({ key, since: WINDOWS[key] ? new Date(Date.now() - WINDOWS[key]).toISOString() : null });
              }}
            >
              {(Object.keys(WINDOWS) as Window[]).map((key) => (
                <option key={key} value={key}>
                  {WINDOW_LABELS[key]}
                </option>
              ))}
            </select>
          </label>
        </div>
        <div className="toolbar actions">
          <button type="button" data-testid="bulk-retry" disabled={busy || !selected.size} onClick={retrySelected}>
            Retry selected ({selected.size})
          </button>
          <button type="button" data-testid="bulk-cancel" disabled={busy || !selected.size} onClick={cancelSelected}>
            Cancel selected ({selected.size})
          </button>
          <span className="divider" />
          <button type="button" data-testid="retry-matching" disabled={busy} onClick={() => allMatching("retry")}>
            Retry all matching
          </button>
          <button
            type="button"
            className={confirmCancelAll ? "danger" : undefined}
            data-testid="cancel-matching"
            disabled={busy}
            onClick={() => (confirmCancelAll ? allMatching("cancel") : setConfirmCancelAll(true))}
            onBlur={() => setConfirmCancelAll(false)}
          >
            {confirmCancelAll ? "Click again to cancel all matching" : "Cancel all matching"}
          </button>
          <label className="inline" title="cancelJob(s) with terminate: true">
            <input type="checkbox" data-testid="cancel-terminate" checked={terminate} onChange={(e) => setTerminate(e.target.checked)} />
            also stop running ones
          </label>
          {bulk && (
            <span className="bulk-result" data-testid="bulk-result">
              {bulk}
            </span>
          )}
        </div>

        <table className="table jobs">
          <colgroup>
            <col className="c-select" />
            <col className="c-id" />
            <col className="c-task" />
            <col className="c-state" />
            <col />
            <col className="c-created" />
            <col className="c-time" />
            <col className="c-time" />
            <col className="c-worker" />
            <col className="c-tries" />
          </colgroup>
          <thead>
            <tr>
              <th className="narrow">
                <input
                  type="checkbox"
                  aria-label="Select all listed"
                  data-testid="job-select-all"
                  checked={allSelected}
                  onChange={() => setSelected(allSelected ? new Set() : new Set(jobs.map((job) => job.id)))}
                />
              </th>
              <th>Job</th>
              <th>Task</th>
              <th>State</th>
              <th className="wide">Progress / outcome</th>
              <th>Created</th>
              <th>Waited</th>
              <th>Ran</th>
              <th>Worker</th>
              <th className="num">Tries</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((job) => (
              <JobRow key={job.id} job={job} selected={selected.has(job.id)} onToggle={toggle} />
            ))}
            {!jobs.length && (
              <tr>
                <td colSpan={10} className="empty">
                  {loading ? "Loading…" : "No job matches."}
                </td>
              </tr>
            )}
            {pageInfo?.hasNextPage && (
              <tr ref={sentinel}>
                <td colSpan={10} className="empty">
                  Loading more…
                </td>
              </tr>
            )}
          </tbody>
        </table>
        <p className="muted small" data-testid="jobs-count">
          {jobs.length} listed{pageInfo?.hasNextPage ? ", more below" : ""}
        </p>
      </section>
    </div>
  );
}

// A row re-renders only when its job changes: the cache hands unchanged jobs back as the same objects.
const JobRow = memo(function JobRow({ job, selected, onToggle }: { job: JobRowFragment; selected: boolean; onToggle(id: string): void }) {
  return (
    <tr data-testid={`job-row-${job.id}`} data-state={job.state} className={selected ? "selected" : undefined}>
      <td className="narrow">
        <input type="checkbox" aria-label={`Select ${job.id}`} data-testid={`job-select-${job.id}`} checked={selected} onChange={() => onToggle(job.id)} />
      </td>
      <td>
        <a className="mono" href={href.job(job.id)} title={job.id}>
          {shortId(job.id)}
        </a>
      </td>
      <td>{job.task}</td>
      <td>
        <StateBadge state={job.state} />
      </td>
      <td className="wide">
        <Outcome job={job} />
      </td>
      <td title={job.createdAt}>{time(job.createdAt)}</td>
      <td>{between(job.createdAt, job.startedAt)}</td>
      <td>{between(job.startedAt, job.finishedAt)}</td>
      <td className="ellipsis" title={job.worker ?? undefined}>
        {job.worker ?? "—"}
      </td>
      <td className="num">{job.attempts}</td>
    </tr>
  );
});

function Outcome({ job }: { job: JobRowFragment }) {
  if (job.error) {
    return (
      <span className="outcome-error ellipsis" title={`${job.error.type}: ${job.error.message}`}>
        {job.error.type}: {job.error.message}
      </span>
    );
  }
  if (RUNNING.has(job.state) || job.progress) {
    return <ProgressBar percent={job.progress?.percent ?? (job.state === "SUCCESS" ? 100 : null)} label={job.progress?.message} />;
  }
  return <span className="muted">{job.state === "SUCCESS" ? "done" : job.state === "PENDING" ? "waiting" : ""}</span>;
}

function NewJob({ tasks }: { tasks: Parameters<typeof TaskInputForm>[0]["tasks"] }) {
  const [enqueue, { loading }] = useMutation(EnqueueDocument);
  return (
    <TaskInputForm
      tasks={tasks}
      prefix="new-job"
      submitLabel="Enqueue"
      busy={loading}
      onSubmit={(task, input) => {
        void enqueue({ variables: { task, input } })
          .then((result) => {
            const id = result.data?.enqueue.id;
            if (id) navigate(href.job(id));
          })
          .catch(() => {
            // The banner shows why.
          });
      }}
    />
  );
}
