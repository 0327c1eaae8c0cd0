// One job, live: `subscription { job(id) }` sends it as it is, then every change (progress,
// events, log lines), and completes once the job is final.
import { useEffect, useRef, type ReactNode } from "react";
import { useMutation, useSubscription } from "@apollo/client/react";

import { CancelJobDocument, JobWatchDocument, RetryJobDocument, type JobDetailFragment } from "../__generated__/graphql";
import { Json } from "../components/Json";
import { ProgressBar } from "../components/ProgressBar";
import { StateBadge } from "../components/StateBadge";
import { describe } from "../lib/errors";
import { between, time } from "../lib/format";
import { RUNNING } from "../lib/jobs";
import { useReadyWhen } from "../lib/ready";
import { href, navigate } from "../lib/route";

export default function JobScreen({ id }: { id: string }) {
  const { data, loading, error } = useSubscription(JobWatchDocument, { variables: { id } });
  const job = data?.job;
  useReadyWhen(Boolean(job));

  return (
    <div className="job-screen">
      <p className="crumbs">
        <a href="#/jobs">Jobs</a> / <span className="mono">{id}</span>
      </p>
      {job ? (
        <JobView job={job} />
      ) : error ? (
        <p className="muted" data-testid="job-missing">
          {describe(error).some((e) => e.code === "NOT_FOUND")
            ? "No job with this id: not found, or not yours."
            : "This job could not be watched (see the error above)."}
        </p>
      ) : (
        <p className="muted">{loading ? "Connecting…" : "No job."}</p>
      )}
    </div>
  );
}

function JobView({ job }: { job: JobDetailFragment }) {
  const [cancel, cancelling] = useMutation(CancelJobDocument);
  const [retry, retrying] = useMutation(RetryJobDocument);
  const running = RUNNING.has(job.state);

  return (
    <>
      <header className="page-head">
        <h1>{job.task}</h1>
        <StateBadge state={job.state} testId="job-state" />
        <span className="spacer" />
        <button
          type="button"
          data-testid="job-cancel"
          disabled={job.done || cancelling.loading}
          title={running ? "cancelJob with terminate: true: the worker stops it" : "cancelJob: it never runs"}
          onClick={() => void cancel({ variables: { id: job.id, terminate: running } }).catch(() => {})}
        >
          {running ? "Stop" : "Cancel"}
        </button>
        <button
          type="button"
          data-testid="job-retry"
          disabled={!job.done || retrying.loading}
          title="retryJob: a new job with the same task and input"
          onClick={() =>
            void retry({ variables: { id: job.id } })
              .then((result) => {
                const retryId = result.data?.retryJob.id;
                if (retryId) navigate(href.job(retryId));
              })
              .catch(() => {})
          }
        >
          Retry
        </button>
      </header>

      <section className="card">
        <ProgressBar
          testId="job-progress"
          percent={job.progress?.percent ?? (job.state === "SUCCESS" ? 100 : job.progress ? null : 0)}
          label={job.progress ? `${job.progress.message ?? ""} (${job.progress.current}${job.progress.total != null ? ` / ${job.progress.total}` : ""})` : null}
        />
        <dl className="facts">
          <Fact label="Id">
            <span className="mono">{job.id}</span>
          </Fact>
          <Fact label="Owner">{job.owner}</Fact>
          <Fact label="Queue">{job.queue}</Fact>
          <Fact label="Worker">{job.worker ?? "—"}</Fact>
          <Fact label="Attempts">{job.attempts}</Fact>
          <Fact label="Retries">{job.retries}</Fact>
          <Fact label="Created">{time(job.createdAt)}</Fact>
          <Fact label="Started">{time(job.startedAt)}</Fact>
          <Fact label="Finished">{time(job.finishedAt)}</Fact>
          <Fact label="Waited">{between(job.createdAt, job.startedAt)}</Fact>
          <Fact label="Ran">{between(job.startedAt, job.finishedAt)}</Fact>
          {job.redelivery && <Fact label="Redelivered">{job.redelivery}</Fact>}
          {job.workflowId && (
            <Fact label="Workflow">
              <a href={href.workflow(job.workflowId)} className="mono">
                {job.workflowId}
              </a>
            </Fact>
          )}
          {job.scheduleId && (
            <Fact label="Schedule">
              <a href={href.schedule(job.scheduleId)}>{job.schedule ?? job.scheduleId}</a>
            </Fact>
          )}
          {job.traceId && (
            <Fact label="Trace">
              <span className="mono" data-testid="job-trace">
                {job.traceId}
              </span>
            </Fact>
          )}
        </dl>
      </section>

      {job.error && (
        <section className="card error-card" data-testid="job-error">
          <h2>
            {job.error.type}
          </h2>
          <pre className="json">{job.error.message}</pre>
        </section>
      )}

      <div className="two">
        <section className="card">
          <h2>Input</h2>
          <Json value={job.input} />
        </section>
        <section className="card">
          <h2>Result</h2>
          <Json value={job.result} />
        </section>
      </div>

      <div className="two">
        <section className="card">
          <h2>Timeline</h2>
          <ol className="timeline">
            {job.events.map((event, i) => (
              <li key={i} data-testid="job-event" data-state={event.state}>
                <span className="at">{time(event.at)}</span>
                <StateBadge state={event.state} />
                {event.count > 1 && <span className="muted">×{event.count}</span>}
                <span className="muted">
                  {event.attempt ? `attempt ${event.attempt}` : ""}
                  {event.worker ? ` on ${event.worker}` : ""}
                </span>
                {event.message && <div className="event-message">{event.message}</div>}
              </li>
            ))}
          </ol>
        </section>
        <section className="card">
          <h2>Logs</h2>
          <Logs job={job} />
        </section>
      </div>

      {job.webhookDeliveries.length > 0 && (
        <section className="card">
          <h2>Webhook deliveries</h2>
          <table className="table">
            <thead>
              <tr>
                <th>At</th>
                <th>Event</th>
                <th className="num">Attempt</th>
                <th className="num">Status</th>
                <th>Error</th>
                <th>Webhook id</th>
              </tr>
            </thead>
            <tbody>
              {job.webhookDeliveries.map((d, i) => (
                <tr key={i}>
                  <td>{time(d.at)}</td>
                  <td>{d.event ?? "—"}</td>
                  <td className="num">{d.attempt}</td>
                  <td className="num">{d.status ?? "—"}</td>
                  <td>{d.error ?? ""}</td>
                  <td className="mono">{d.id}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </>
  );
}

function Fact({ label, children }: { label: string; children: ReactNode }) {
  return (
    <div>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}

// The log follows new lines while it is scrolled to its end.
function Logs({ job }: { job: JobDetailFragment }) {
  const box = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  useEffect(() => {
    if (box.current && pinned.current) box.current.scrollTop = box.current.scrollHeight;
  }, [job.logs]);
  if (!job.logs.length) return <p className="muted">No log lines.</p>;
  return (
    <div
      className="logs"
      ref={box}
      onScroll={(e) => {
        const el = e.currentTarget;
        pinned.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
      }}
    >
      {job.logsDropped > 0 && <div className="muted">… {job.logsDropped} earlier lines dropped</div>}
      {job.logs.map((line, i) => (
        <div key={i} className={`log log-${line.level}`} data-testid="job-log-line">
          <span className="at">{time(line.at)}</span> <span className="level">{line.level}</span> {line.message}
        </div>
      ))}
    </div>
  );
}
