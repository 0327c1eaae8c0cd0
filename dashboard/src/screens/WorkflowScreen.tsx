// One workflow, live: `subscription { workflow(id) }` sends it now, then an update per change of
// any step, and completes once it is done. Its steps are drawn as a graph whose nodes take the
// colour of their state.
import { useMemo } from "react";
import { useMutation, useSubscription } from "@apollo/client/react";

import { CancelWorkflowDocument, WorkflowWatchDocument, type JobRowFragment, type WorkflowWatchSubscription } from "../__generated__/graphql";
import { ProgressBar } from "../components/ProgressBar";
import { StateBadge } from "../components/StateBadge";
import { between, time } from "../lib/format";
import { useReadyWhen } from "../lib/ready";
import { href } from "../lib/route";

type Workflow = WorkflowWatchSubscription["workflow"];

export default function WorkflowScreen({ id }: { id: string }) {
  const { data, loading, error } = useSubscription(WorkflowWatchDocument, { variables: { id } });
  const [cancel, cancelling] = useMutation(CancelWorkflowDocument);
  const workflow = data?.workflow;
  useReadyWhen(Boolean(workflow));

  return (
    <div>
      <p className="crumbs">
        <a href="#/workflows">Workflows</a> / <span className="mono">{id}</span>
      </p>
      {!workflow ? (
        <p className="muted">{error ? "This workflow could not be watched (see the error above)." : loading ? "Connecting…" : "No workflow."}</p>
      ) : (
        <>
          <header className="page-head">
            <h1>{workflow.name || "Workflow"}</h1>
            <StateBadge state={workflow.state} testId="workflow-state" />
            <span className="spacer" />
            <button
              type="button"
              data-testid="workflow-cancel"
              disabled={workflow.done || cancelling.loading}
              title="cancelWorkflow with terminate: true: waiting steps never run, running ones stop"
              onClick={() => void cancel({ variables: { id: workflow.id, terminate: true } }).catch(() => {})}
            >
              Cancel workflow
            </button>
          </header>
          <section className="card">
            <ProgressBar testId="workflow-progress" percent={workflow.progress} />
            <p className="muted small">
              Created {time(workflow.createdAt)}
              {workflow.finishedAt ? `, finished ${time(workflow.finishedAt)} (${between(workflow.createdAt, workflow.finishedAt)})` : ""}
            </p>
            <Graph workflow={workflow} />
          </section>
          <section className="card">
            <h2>Steps</h2>
            <table className="table">
              <thead>
                <tr>
                  <th className="num">#</th>
                  <th>Job</th>
                  <th>Task</th>
                  <th>State</th>
                  <th>Started</th>
                  <th>Ran</th>
                  <th className="wide">Outcome</th>
                </tr>
              </thead>
              <tbody>
                {workflow.steps.map((step, i) => (
                  <tr key={step.id} data-testid={`workflow-step-${step.id}`} data-state={step.state}>
                    <td className="num">{i + 1}</td>
                    <td>
                      <a className="mono" href={href.job(step.id)}>
                        {step.id}
                      </a>
                    </td>
                    <td>{step.task}</td>
                    <td>
                      <StateBadge state={step.state} />
                    </td>
                    <td>{time(step.startedAt)}</td>
                    <td>{between(step.startedAt, step.finishedAt)}</td>
                    <td className="wide ellipsis">
                      {step.error ? `${step.error.type}: ${step.error.message}` : step.progress?.message ?? ""}
                      {workflow.failedStep?.id === step.id && <strong> (failed the workflow)</strong>}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
        </>
      )}
    </div>
  );
}

// The API lists the steps in the order given (depth first through chains, groups and chords) and
// says nothing more of the tree. So the drawing takes that order left to right and stacks the
// steps that ran at the same time (one started before the step before it finished) into one
// column: a group's or chord's members once they run. Until they start, steps stand in line.
function columns(steps: JobRowFragment[]): JobRowFragment[][] {
  const out: JobRowFragment[][] = [];
  for (const step of steps) {
    const last = out[out.length - 1];
    const started = step.startedAt ? Date.parse(step.startedAt) : null;
    const parallel =
      last &&
      started !== null &&
      last.some((other) => other.startedAt && (!other.finishedAt || Date.parse(other.finishedAt) > started));
    if (parallel) last.push(step);
    else out.push([step]);
  }
  return out;
}

const NODE_W = 150;
const NODE_H = 44;
const GAP_X = 56;
const GAP_Y = 14;

function Graph({ workflow }: { workflow: Workflow }) {
  const layout = useMemo(() => columns(workflow.steps), [workflow.steps]);
  const tallest = Math.max(1, ...layout.map((column) => column.length));
  const height = tallest * (NODE_H + GAP_Y) + GAP_Y;
  const width = layout.length * (NODE_W + GAP_X) - GAP_X + 2 * GAP_Y;
  const position = (col: number, row: number, size: number) => ({
    x: GAP_Y + col * (NODE_W + GAP_X),
    y: (height - size * (NODE_H + GAP_Y) + GAP_Y) / 2 + row * (NODE_H + GAP_Y),
  });

  return (
    <div className="graph" data-testid="workflow-graph">
      <svg width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label="Workflow steps">
        {layout.slice(1).map((column, c) =>
          column.map((step, r) =>
            layout[c].map((before, b) => {
              const from = position(c, b, layout[c].length);
              const to = position(c + 1, r, column.length);
              const x1 = from.x + NODE_W;
              const y1 = from.y + NODE_H / 2;
              const x2 = to.x;
              const y2 = to.y + NODE_H / 2;
              const mid = (x1 + x2) / 2;
              return <path key={`${before.id}-${step.id}`} d={`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`} className="edge" />;
            }),
          ),
        )}
        {layout.map((column, c) =>
          column.map((step, r) => {
            const { x, y } = position(c, r, column.length);
            const percent = step.progress?.percent;
            return (
              <a key={step.id} href={href.job(step.id)} data-testid={`workflow-node-${step.id}`} data-state={step.state}>
                <title>{`${step.task} ${step.state}${step.error ? `: ${step.error.message}` : ""}`}</title>
                <rect x={x} y={y} width={NODE_W} height={NODE_H} rx={8} className={`node fill-${step.state}`} />
                {percent != null && !step.done && (
                  <rect x={x} y={y + NODE_H - 4} width={(NODE_W * Math.min(100, percent)) / 100} height={4} className="node-progress" />
                )}
                <text x={x + 10} y={y + 18} className="node-title">
                  {step.task.length > 20 ? `${step.task.slice(0, 19)}…` : step.task}
                </text>
                <text x={x + 10} y={y + 34} className="node-state">
                  {step.state}
                  {percent != null && !step.done ? ` ${Math.round(percent)}%` : ""}
                </text>
              </a>
            );
          }),
        )}
      </svg>
    </div>
  );
}
