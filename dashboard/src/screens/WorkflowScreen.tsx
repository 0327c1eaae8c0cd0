// One workflow, live: `subscription { workflow(id) }` sends it now, then an update per change of
// any step, and completes once it is done. Its steps are drawn as the tree it was given
// (`Workflow.shape`: chains left to right, a group's members stacked in one column, a chord's
// header then its body), each node taking the colour of its step's state.
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

// Where each step is drawn, in cells of the grid (a row may be a fraction: a short stage is
// centred on a tall one), the edges between steps, and the block's size. `entries` are the steps
// an edge from the stage before reaches, `exits` those an edge to the stage after leaves.
interface Block {
  cells: { id: string; col: number; row: number }[];
  edges: [string, string][];
  cols: number;
  rows: number;
  entries: string[];
  exits: string[];
}

const moved = (block: Block, col: number, row: number) =>
  block.cells.map((cell) => ({ id: cell.id, col: cell.col + col, row: cell.row + row }));

// One stage after another, left to right, each centred on the tallest; every exit of a stage is
// joined to every entry of the next.
function inChain(parts: Block[]): Block {
  const rows = Math.max(...parts.map((part) => part.rows));
  const out: Block = { cells: [], edges: [], cols: 0, rows, entries: parts[0].entries, exits: parts[parts.length - 1].exits };
  parts.forEach((part, i) => {
    out.cells.push(...moved(part, out.cols, (rows - part.rows) / 2));
    out.edges.push(...part.edges);
    if (i > 0) for (const from of parts[i - 1].exits) for (const to of part.entries) out.edges.push([from, to]);
    out.cols += part.cols;
  });
  return out;
}

// Members in parallel, stacked from one column: a member that is a chain is a row of its own.
function inGroup(parts: Block[]): Block {
  const out: Block = { cells: [], edges: [], cols: Math.max(...parts.map((part) => part.cols)), rows: 0, entries: [], exits: [] };
  for (const part of parts) {
    out.cells.push(...moved(part, 0, out.rows));
    out.edges.push(...part.edges);
    out.entries.push(...part.entries);
    out.exits.push(...part.exits);
    out.rows += part.rows;
  }
  return out;
}

// `Workflow.shape` laid out: {step: id}, {chain: [..]}, {group: [..]}, {chord: {header: [..],
// body}} (a chord is its header as a group, then its body). Null for anything else, so the
// page draws the steps as before rather than a tree it does not understand.
function place(node: unknown, depth = 0): Block | null {
  if (depth > 64 || typeof node !== "object" || node === null) return null;
  const fields = Object.entries(node);
  if (fields.length !== 1) return null;
  const [kind, value] = fields[0];
  const all = (items: unknown): Block[] | null => {
    if (!Array.isArray(items) || items.length === 0) return null;
    const parts = items.map((item) => place(item, depth + 1));
    return parts.every((part) => part !== null) ? (parts as Block[]) : null;
  };
  switch (kind) {
    case "step":
      return typeof value === "string" ? { cells: [{ id: value, col: 0, row: 0 }], edges: [], cols: 1, rows: 1, entries: [value], exits: [value] } : null;
    case "chain": {
      const parts = all(value);
      return parts && inChain(parts);
    }
    case "group": {
      const parts = all(value);
      return parts && inGroup(parts);
    }
    case "chord": {
      const { header, body } = (value ?? {}) as { header?: unknown; body?: unknown };
      const parts = all(header);
      const last = place(body, depth + 1);
      return parts && last && inChain([inGroup(parts), last]);
    }
    default:
      return null;
  }
}

// A workflow recorded before the API kept its shape (null) has only its steps in the order given
// (depth first through chains, groups and chords). Then the drawing takes that order left to
// right and stacks the steps that ran at the same time (one started before the step before it
// finished) into one column: a group's or chord's members once they run. Until they start,
// steps stand in line.
function columns(steps: JobRowFragment[]): Block {
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
  const stages = out.map((column) =>
    inGroup(column.map((step) => ({ cells: [{ id: step.id, col: 0, row: 0 }], edges: [], cols: 1, rows: 1, entries: [step.id], exits: [step.id] }))),
  );
  return stages.length ? inChain(stages) : { cells: [], edges: [], cols: 0, rows: 0, entries: [], exits: [] };
}

// The shape's layout when it names exactly the steps there are, each once.
function layout(workflow: Workflow): Block {
  const ids = new Set(workflow.steps.map((step) => step.id));
  const tree = place(workflow.shape);
  const named = tree?.cells.map((cell) => cell.id) ?? [];
  const exact = named.length === ids.size && new Set(named).size === named.length && named.every((id) => ids.has(id));
  return tree && exact ? tree : columns(workflow.steps);
}

const NODE_W = 150;
const NODE_H = 44;
const GAP_X = 56;
const GAP_Y = 14;

function Graph({ workflow }: { workflow: Workflow }) {
  const block = useMemo(() => layout(workflow), [workflow]);
  const steps = useMemo(() => new Map(workflow.steps.map((step) => [step.id, step])), [workflow.steps]);
  const at = useMemo(() => new Map(block.cells.map((cell) => [cell.id, cell])), [block]);
  const height = Math.max(1, block.rows) * (NODE_H + GAP_Y) + GAP_Y;
  const width = block.cols * (NODE_W + GAP_X) - GAP_X + 2 * GAP_Y;
  const position = (cell: { col: number; row: number }) => ({
    x: GAP_Y + cell.col * (NODE_W + GAP_X),
    y: GAP_Y + cell.row * (NODE_H + GAP_Y),
  });

  return (
    <div className="graph" data-testid="workflow-graph">
      <svg width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label="Workflow steps">
        {block.edges.map(([fromId, toId]) => {
          const from = at.get(fromId);
          const to = at.get(toId);
          if (!from || !to) return null;
          const start = position(from);
          const end = position(to);
          const x1 = start.x + NODE_W;
          const y1 = start.y + NODE_H / 2;
          const x2 = end.x;
          const y2 = end.y + NODE_H / 2;
          const mid = x2 - GAP_X / 2;
          return <path key={`${fromId}-${toId}`} d={`M${x1},${y1} L${Math.max(x1, mid - GAP_X / 2)},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`} className="edge" />;
        })}
        {block.cells.map((cell) => {
          const step = steps.get(cell.id);
          if (!step) return null;
          const { x, y } = position(cell);
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
        })}
      </svg>
    </div>
  );
}
