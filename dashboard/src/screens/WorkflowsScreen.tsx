// Your workflows, newest first (`workflows`, a Relay connection). No subscription streams the
// list itself; the `jobs` subscription does stream the steps: a step's change shows at once in
// its row's dots (the cache holds steps as jobs), and refetches the list within a second or so
// for what the server derives from the steps (the workflow's state and progress, new workflows).
import { useEffect, useMemo, useRef } from "react";
import { useQuery } from "@apollo/client/react";

import { WorkflowsDocument } from "../__generated__/graphql";
import { StateBadge } from "../components/StateBadge";
import { ago, shortId, time } from "../lib/format";
import { useJobStream } from "../lib/jobs";
import { useReadyWhen } from "../lib/ready";
import { href } from "../lib/route";

const PAGE_SIZE = 20;

export default function WorkflowsScreen() {
  const { data, loading, error, fetchMore, refetch } = useQuery(WorkflowsDocument, {
    variables: { first: PAGE_SIZE },
    notifyOnNetworkStatusChange: true,
  });
  useReadyWhen(Boolean(data));
  const edges = useMemo(() => data?.workflows.edges ?? [], [data]);

  const countRef = useRef(0);
  countRef.current = edges.length;
  const pending = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => () => clearTimeout(pending.current ?? undefined), []);
  useJobStream(null, (changed) => {
    if (pending.current || !changed.some((job) => job.workflowId)) return;
    pending.current = setTimeout(() => {
      pending.current = null;
      void refetch({ first: Math.min(100, Math.max(PAGE_SIZE, countRef.current)), after: null }).catch(() => {});
    }, 1000);
  });

  return (
    <div>
      <header className="page-head">
        <h1>Workflows</h1>
      </header>
      <section className="card">
        <table className="table">
          <thead>
            <tr>
              <th>Workflow</th>
              <th>Name</th>
              <th>State</th>
              <th className="wide">Steps</th>
              <th className="num">Progress</th>
              <th>Created</th>
              <th>Finished</th>
            </tr>
          </thead>
          <tbody>
            {edges.map(({ node: workflow }) => (
              <tr key={workflow.id} data-testid={`workflow-row-${workflow.id}`} data-state={workflow.state}>
                <td>
                  <a className="mono" href={href.workflow(workflow.id)} title={workflow.id}>
                    {shortId(workflow.id)}
                  </a>
                </td>
                <td>{workflow.name || <span className="muted">unnamed</span>}</td>
                <td>
                  <StateBadge state={workflow.state} />
                </td>
                <td className="wide">
                  <span className="dots">
                    {workflow.steps.map((step) => (
                      <a key={step.id} href={href.job(step.id)} className={`dot fill-${step.state}`} title={`${step.id} ${step.state}`} />
                    ))}
                  </span>
                </td>
                <td className="num">{Math.round(workflow.progress)}%</td>
                <td title={workflow.createdAt}>{time(workflow.createdAt)}</td>
                <td>{workflow.finishedAt ? ago(workflow.finishedAt) : "—"}</td>
              </tr>
            ))}
            {!edges.length && (
              <tr>
                <td colSpan={7} className="empty">
                  {loading ? "Loading…" : error ? "The workflows could not be read (see the error above)." : "No workflow yet: run one with runWorkflow."}
                </td>
              </tr>
            )}
          </tbody>
        </table>
        {data?.workflows.pageInfo.hasNextPage && (
          <button type="button" disabled={loading} onClick={() => void fetchMore({ variables: { after: data.workflows.pageInfo.endCursor } })}>
            More
          </button>
        )}
      </section>
    </div>
  );
}
