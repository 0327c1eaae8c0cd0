// Your periodic schedules. No subscription streams schedules: the list is refetched every few
// seconds (what the API offers), and at once after each change made here.
import { useState } from "react";
import { useApolloClient, useMutation, useQuery } from "@apollo/client/react";

import {
  CreateScheduleDocument,
  DeleteScheduleDocument,
  DisableScheduleDocument,
  EnableScheduleDocument,
  SchedulesDocument,
  TasksDocument,
  type ScheduleRowFragment,
  type ScheduleTiming,
} from "../__generated__/graphql";
import { TaskInputForm } from "../components/TaskInputForm";
import { ago, shortId, time } from "../lib/format";
import { useReadyWhen } from "../lib/ready";
import { href } from "../lib/route";

const CRON_FIELDS = ["minute", "hour", "dayOfMonth", "monthOfYear", "dayOfWeek"] as const;

export default function SchedulesScreen({ highlight }: { highlight?: string }) {
  const { data, loading, error, refetch } = useQuery(SchedulesDocument, { pollInterval: 5000 });
  useReadyWhen(Boolean(data));
  const schedules = data?.schedules ?? [];

  return (
    <div>
      <header className="page-head">
        <h1>Schedules</h1>
      </header>
      <section className="card">
        <table className="table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Task</th>
              <th>When</th>
              <th>Enabled</th>
              <th>Next run</th>
              <th>Last run</th>
              <th className="num">Runs</th>
              <th>Queue</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {schedules.map((schedule) => (
              <ScheduleRow key={schedule.id} schedule={schedule} highlighted={schedule.id === highlight} onChanged={() => void refetch()} />
            ))}
            {!schedules.length && (
              <tr>
                <td colSpan={9} className="empty">
                  {loading ? "Loading…" : error ? "The schedules could not be read (see the error above)." : "No schedule yet."}
                </td>
              </tr>
            )}
          </tbody>
        </table>
      </section>
      <section className="card">
        <h2>New schedule</h2>
        <NewSchedule onCreated={() => void refetch()} />
      </section>
    </div>
  );
}

function timing(schedule: ScheduleRowFragment): string {
  if (schedule.interval != null) return `every ${schedule.interval} s`;
  const c = schedule.crontab;
  if (!c) return "—";
  return `cron ${c.minute} ${c.hour} ${c.dayOfMonth} ${c.monthOfYear} ${c.dayOfWeek} (${schedule.timezone})`;
}

function ScheduleRow({ schedule, highlighted, onChanged }: { schedule: ScheduleRowFragment; highlighted: boolean; onChanged(): void }) {
  const client = useApolloClient();
  const [busy, setBusy] = useState(false);
  const [confirm, setConfirm] = useState(false);

  async function run(action: () => Promise<unknown>) {
    setBusy(true);
    try {
      await action();
    } catch {
      // The banner shows why.
    } finally {
      setBusy(false);
      onChanged();
    }
  }

  const toggle = () =>
    run(() =>
      schedule.enabled
        ? client.mutate({ mutation: DisableScheduleDocument, variables: { id: schedule.id } })
        : client.mutate({ mutation: EnableScheduleDocument, variables: { id: schedule.id } }),
    );
  const remove = () => run(() => client.mutate({ mutation: DeleteScheduleDocument, variables: { id: schedule.id } }));

  return (
    <tr data-testid={`schedule-row-${schedule.id}`} data-enabled={schedule.enabled} className={highlighted ? "highlight" : undefined}>
      <td>
        <strong>{schedule.name}</strong>
      </td>
      <td>{schedule.task}</td>
      <td>{timing(schedule)}</td>
      <td>
        <label className="switch">
          <input type="checkbox" data-testid={`schedule-toggle-${schedule.id}`} checked={schedule.enabled} disabled={busy} onChange={toggle} />
          <span>{schedule.enabled ? "on" : "off"}</span>
        </label>
      </td>
      <td title={schedule.nextRunAt ?? undefined}>{schedule.enabled ? time(schedule.nextRunAt) : "—"}</td>
      <td>
        {schedule.lastJobId ? (
          <a href={href.job(schedule.lastJobId)} title={schedule.lastRunAt ?? undefined}>
            {ago(schedule.lastRunAt)} <span className="mono">{shortId(schedule.lastJobId)}</span>
          </a>
        ) : (
          "—"
        )}
      </td>
      <td className="num">{schedule.runs}</td>
      <td>{schedule.queue}</td>
      <td>
        <button
          type="button"
          className={confirm ? "danger" : undefined}
          data-testid={`schedule-delete-${schedule.id}`}
          disabled={busy}
          onClick={() => (confirm ? void remove() : setConfirm(true))}
          onBlur={() => setConfirm(false)}
        >
          {confirm ? "Delete?" : "Delete"}
        </button>
      </td>
    </tr>
  );
}

function NewSchedule({ onCreated }: { onCreated(): void }) {
  const tasks = useQuery(TasksDocument);
  const [create, { loading }] = useMutation(CreateScheduleDocument);
  const [name, setName] = useState("");
  const [kind, setKind] = useState<"interval" | "crontab">("interval");
  const [every, setEvery] = useState("60");
  const [cron, setCron] = useState<Record<(typeof CRON_FIELDS)[number], string>>({ minute: "*/15", hour: "*", dayOfMonth: "*", monthOfYear: "*", dayOfWeek: "*" });
  const [timezone, setTimezone] = useState(() => Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC");
  const [created, setCreated] = useState<string | null>(null);

  if (!tasks.data) return <p className="muted">Loading tasks…</p>;
  return (
    <TaskInputForm
      tasks={tasks.data.tasks}
      prefix="schedule"
      submitLabel="Create schedule"
      busy={loading}
      onSubmit={(task, input) => {
        const when: ScheduleTiming =
          kind === "interval" ? { interval: Number(every), timezone } : { crontab: { ...cron }, timezone };
        setCreated(null);
        void create({ variables: { name: name.trim(), task, input, timing: when } })
          .then((result) => {
            setCreated(result.data?.createSchedule.name ?? null);
            setName("");
            onCreated();
          })
          .catch(() => {});
      }}
    >
      <fieldset className="timing">
        <legend>Schedule</legend>
        <label className="field">
          <span>
            Name<b className="required"> *</b>
          </span>
          <input data-testid="schedule-name" required value={name} onChange={(e) => setName(e.target.value)} />
        </label>
        <div className="radios">
          <label>
            <input type="radio" data-testid="schedule-kind-interval" checked={kind === "interval"} onChange={() => setKind("interval")} /> Interval
          </label>
          <label>
            <input type="radio" data-testid="schedule-kind-crontab" checked={kind === "crontab"} onChange={() => setKind("crontab")} /> Crontab
          </label>
        </div>
        {kind === "interval" ? (
          <label className="field">
            <span>Every (seconds)</span>
            <input data-testid="schedule-interval" type="number" min={1} step="any" value={every} onChange={(e) => setEvery(e.target.value)} />
          </label>
        ) : (
          <div className="cron">
            {CRON_FIELDS.map((field) => (
              <label key={field} className="field">
                <span>{field}</span>
                <input data-testid={`schedule-cron-${field}`} value={cron[field]} onChange={(e) => setCron({ ...cron, [field]: e.target.value })} />
              </label>
            ))}
            <label className="field">
              <span>time zone</span>
              <input data-testid="schedule-timezone" value={timezone} onChange={(e) => setTimezone(e.target.value)} />
            </label>
          </div>
        )}
        {created && <p className="ok">Created “{created}”.</p>}
      </fieldset>
    </TaskInputForm>
  );
}
