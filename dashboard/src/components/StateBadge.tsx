import type { JobState, WorkflowState } from "../__generated__/graphql";

export function StateBadge({ state, testId }: { state: JobState | WorkflowState; testId?: string }) {
  return (
    <span className={`badge state-${state}`} data-testid={testId} data-state={testId ? state : undefined}>
      {state}
    </span>
  );
}
