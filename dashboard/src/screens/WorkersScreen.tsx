// Workers and queues. No subscription streams them: `workers` and `queues` are refetched every
// few seconds (the API refreshes them from heartbeats at that pace anyway). What each worker
// runs is live: the running jobs, then the `jobs` subscription.
import { useMemo, useState } from "react";
import { useApolloClient, useQuery } from "@apollo/client/react";

import {
  JobsDocument,
  PauseQueueDocument,
  ResumeQueueDocument,
  WorkersAndQueuesDocument,
  type JobFilter,
  type JobRowFragment,
  type QueueRowFragment,
} from "../__generated__/graphql";
import { ProgressBar } from "../components/ProgressBar";
import { ago, shortId, time } from "../lib/format";
import { PAGE, RUNNING, useJobStream } from "../lib/jobs";
import { useReadyWhen } from "../lib/ready";
import { href } from "../lib/route";
import { useViewer } from "../lib/viewer";

const STALE_MS = 30_000;
const RUNNING_FILTER: JobFilter = { states: ["STARTED", "PROGRESS"] };

export default function WorkersScreen() {
  const { data, loading } = useQuery(WorkersAndQueuesDocument, { pollInterval: 3000 });
  useReadyWhen(Boolean(data));
  const running = useRunning();
  const byWorker = useMemo(() => {
    const map = new Map<string, JobRowFragment[]>();
    for (const job of running) {
      const list = map.get(job.worker ?? "") ?? [];
      list.push(job);
      map.set(job.worker ?? "", list);
    }
    return map;
  }, [running]);
  const now = Date.now();

  return (
    <div>
      <header className="page-head">
        <h1>Workers &amp; queues</h1>
      </header>
      <section className="card">
        <h2>Queues</h2>
        <table className="table">
          <thead>
            <tr>
              <th>Queue</th>
              <th className="num">Pending</th>
              <th className="num">Consumers</th>
              <th>Workers</th>
              <th>Paused</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {data?.queues.map((queue) => <QueueRow key={queue.name} queue={queue} />)}
            {!data?.queues.length && (
              <tr>
                <td colSpan={6} className="empty">
                  {loading ? "Loading…" : "No queue."}
                </td>
              </tr>
            )}
          </tbody>
        </table>
      </section>
      <section className="card">
        <h2>Workers</h2>
        <table className="table">
          <thead>
            <tr>
              <th>Worker</th>
              <th>Status</th>
              <th>Pool</th>
              <th className="num">Concurrency</th>
              <th className="num">Active</th>
              <th className="num">Reserved</th>
              <th className="num">Processed</th>
              <th>Queues</th>
              <th>Heartbeat</th>
              <th>Up since</th>
            </tr>
          </thead>
          <tbody>
            {data?.workers.map((worker) => {
              const alive = now - Date.parse(worker.lastHeartbeat) < STALE_MS;
              const jobs = byWorker.get(worker.name) ?? [];
              return [
                <tr key={worker.name} data-testid={`worker-row-${worker.name}`} data-alive={alive}>
                  <td>
                    <span className={`alive ${alive ? "yes" : "no"}`} title={alive ? "heartbeat fresh" : "no recent heartbeat"} /> {worker.name}
                  </td>
                  <td>{worker.status}</td>
                  <td>{worker.pool}</td>
                  <td className="num">{worker.concurrency}</td>
                  <td className="num">{worker.active}</td>
                  <td className="num">{worker.reserved}</td>
                  <td className="num">{worker.processed}</td>
                  <td>{worker.queues.join(", ")}</td>
                  <td title={worker.lastHeartbeat}>{ago(worker.lastHeartbeat, now)}</td>
                  <td title={worker.startedAt}>{time(worker.startedAt)}</td>
                </tr>,
                <tr key={`${worker.name}-jobs`} className="sub">
                  <td colSpan={10}>
                    <Running jobs={jobs} testId={`worker-jobs-${worker.name}`} />
                  </td>
                </tr>,
              ];
            })}
            {!data?.workers.length && (
              <tr>
                <td colSpan={10} className="empty">
                  {loading ? "Loading…" : "No live worker."}
                </td>
              </tr>
            )}
          </tbody>
        </table>
        {byWorker.has("") && (
          <p className="muted small">
            {byWorker.get("")!.length} running jobs name no worker yet.
          </p>
        )}
      </section>
    </div>
  );
}

// The jobs running now (STARTED or PROGRESS): the first read, which the jobs subscription
// keeps current (a job that starts is added to the list, one that finishes shows its new state
// and is left out here).
function useRunning(): JobRowFragment[] {
  const { data } = useQuery(JobsDocument, {
    variables: { first: PAGE, filter: RUNNING_FILTER },
    fetchPolicy: "network-only",
  });
  useJobStream(null);
  return useMemo(() => (data?.jobs.edges ?? []).map((edge) => edge.node).filter((job) => RUNNING.has(job.state)), [data]);
}

function Running({ jobs, testId }: { jobs: JobRowFragment[]; testId: string }) {
  if (!jobs.length) return <span className="muted small" data-testid={testId}>idle</span>;
  return (
    <ul className="running" data-testid={testId}>
      {jobs.map((job) => (
        <li key={job.id}>
          <a href={href.job(job.id)} className="mono">
            {shortId(job.id)}
          </a>{" "}
          {job.task}
          <ProgressBar percent={job.progress?.percent} label={job.progress?.message} />
        </li>
      ))}
    </ul>
  );
}

function QueueRow({ queue }: { queue: QueueRowFragment }) {
  const client = useApolloClient();
  const { admin } = useViewer();
  const [busy, setBusy] = useState(false);

  async function act(pause: boolean) {
    setBusy(true);
    try {
      await client.mutate(
        pause
          ? { mutation: PauseQueueDocument, variables: { name: queue.name } }
          : { mutation: ResumeQueueDocument, variables: { name: queue.name } },
      );
    } catch {
      // The banner shows why.
    } finally {
      setBusy(false);
    }
  }

  return (
    <tr data-testid={`queue-row-${queue.name}`} data-paused={queue.paused}>
      <td>
        <strong>{queue.name}</strong>
      </td>
      <td className="num">{queue.pending}</td>
      <td className="num">{queue.consumers}</td>
      <td className="ellipsis">{queue.workers.join(", ") || "—"}</td>
      <td>
        {queue.paused ? (
          <span className="badge paused" title={queue.pausedSince ?? undefined}>
            paused {queue.pausedBy ? `by ${queue.pausedBy}` : ""} {queue.pausedSince ? ago(queue.pausedSince) : ""}
          </span>
        ) : (
          <span className="muted">no</span>
        )}
      </td>
      <td>
        {admin &&
          (queue.paused ? (
            <button type="button" data-testid={`queue-resume-${queue.name}`} disabled={busy} onClick={() => void act(false)}>
              Resume
            </button>
          ) : (
            <button type="button" data-testid={`queue-pause-${queue.name}`} disabled={busy} onClick={() => void act(true)}>
              Pause
            </button>
          ))}
      </td>
    </tr>
  );
}
