// Small charts of the last hour, drawn from jobs the API already serves: up to the 500 newest
// created in the hour (`jobs`, five pages), kept live by the `jobs` subscription. Inline SVG.
import { useEffect, useMemo, useState } from "react";
import { useQuery } from "@apollo/client/react";

import { JobsDocument, type JobFilter, type JobRowFragment } from "../__generated__/graphql";
import { seconds } from "../lib/format";
import { PAGE, STATES, useJobStream } from "../lib/jobs";

const HOUR = 3_600_000;
const MOST = 500;

export default function Charts() {
  const [filter] = useState<JobFilter>(() => ({ createdAfter: new Date(Date.now() - HOUR).toISOString() }));
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 15_000);
    return () => clearInterval(timer);
  }, []);

  const { data, fetchMore } = useQuery(JobsDocument, { variables: { first: PAGE, filter } });
  useJobStream(filter);
  const edges = data?.jobs.edges;
  const pageInfo = data?.jobs.pageInfo;
  useEffect(() => {
    if (edges && pageInfo?.hasNextPage && pageInfo.endCursor && edges.length < MOST) {
      void fetchMore({ variables: { after: pageInfo.endCursor } });
    }
  }, [edges, pageInfo, fetchMore]);

  const jobs = useMemo(() => edges?.map((edge) => edge.node) ?? [], [edges]);
  if (!data) return <p className="muted">Loading charts…</p>;
  return (
    <div className="charts" data-testid="charts">
      <PerMinute jobs={jobs} now={now} />
      <Distribution title="Queue wait" jobs={jobs} from="createdAt" to="startedAt" />
      <Distribution title="Run time" jobs={jobs} from="startedAt" to="finishedAt" />
    </div>
  );
}

function PerMinute({ jobs, now }: { jobs: JobRowFragment[]; now: number }) {
  const minutes = useMemo(() => {
    const buckets = Array.from({ length: 60 }, () => new Map<string, number>());
    const start = now - HOUR;
    for (const job of jobs) {
      const at = Date.parse(job.createdAt);
      const index = Math.floor((at - start) / 60_000);
      if (index < 0 || index >= 60) continue;
      buckets[index].set(job.state, (buckets[index].get(job.state) ?? 0) + 1);
    }
    return buckets;
  }, [jobs, now]);
  const total = minutes.reduce((sum, m) => sum + [...m.values()].reduce((a, b) => a + b, 0), 0);
  const peak = Math.max(1, ...minutes.map((m) => [...m.values()].reduce((a, b) => a + b, 0)));
  const width = 300;
  const height = 120;
  const bar = width / 60;
  return (
    <figure className="chart">
      <figcaption>
        Jobs per minute, last hour <span className="muted">({total}{jobs.length >= MOST ? "+" : ""}, peak {peak})</span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height + 14}`} role="img" aria-label="Jobs created per minute by state">
        <line x1={0} x2={width} y1={height} y2={height} className="axis" />
        {minutes.map((bucket, i) => {
          let y = height;
          return STATES.filter((s) => bucket.has(s)).map((state) => {
            const count = bucket.get(state)!;
            const h = (count / peak) * (height - 4);
            y -= h;
            return (
              <rect key={`${i}-${state}`} x={i * bar + 0.5} y={y} width={bar - 1} height={h} className={`fill-${state}`}>
                <title>{`${60 - i} min ago: ${count} ${state}`}</title>
              </rect>
            );
          });
        })}
        <text x={0} y={height + 12} className="tick">
          −60 min
        </text>
        <text x={width} y={height + 12} className="tick" textAnchor="end">
          now
        </text>
      </svg>
    </figure>
  );
}

const EDGES = [0, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300];
const LABELS = ["<0.1s", "<0.5s", "<1s", "<2s", "<5s", "<10s", "<30s", "<1m", "<5m", "≥5m"];

function Distribution({ title, jobs, from, to }: { title: string; jobs: JobRowFragment[]; from: "createdAt" | "startedAt"; to: "startedAt" | "finishedAt" }) {
  const { counts, median, p95, n } = useMemo(() => {
    const values: number[] = [];
    for (const job of jobs) {
      const a = job[from];
      const b = job[to];
      if (a && b) values.push(Math.max(0, Date.parse(b) - Date.parse(a)) / 1000);
    }
    values.sort((x, y) => x - y);
    const counts = EDGES.map(() => 0);
    for (const v of values) {
      let i = EDGES.length - 1;
      while (i > 0 && v < EDGES[i]) i--;
      counts[i]++;
    }
    const q = (p: number) => (values.length ? values[Math.min(values.length - 1, Math.floor(p * values.length))] : NaN);
    return { counts, median: q(0.5), p95: q(0.95), n: values.length };
  }, [jobs, from, to]);
  const peak = Math.max(1, ...counts);
  const width = 300;
  const height = 120;
  const bar = width / counts.length;
  return (
    <figure className="chart">
      <figcaption>
        {title} <span className="muted">(n {n}, median {seconds(median * 1000)}, p95 {seconds(p95 * 1000)})</span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height + 14}`} role="img" aria-label={`${title} distribution`}>
        <line x1={0} x2={width} y1={height} y2={height} className="axis" />
        {counts.map((count, i) => {
          const h = (count / peak) * (height - 4);
          return (
            <g key={i}>
              <rect x={i * bar + 2} y={height - h} width={bar - 4} height={h} className="fill-bar">
                <title>{`${LABELS[i]}: ${count}`}</title>
              </rect>
              <text x={i * bar + bar / 2} y={height + 12} className="tick" textAnchor="middle">
                {LABELS[i]}
              </text>
            </g>
          );
        })}
      </svg>
    </figure>
  );
}
