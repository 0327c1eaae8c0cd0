// A progress bar for one job, fed by a subscription (createElement: no JSX build needed).
import { gql } from "@apollo/client";
import { useSubscription } from "@apollo/client/react";
import { createElement as h } from "react";

export const WATCH_JOB = gql`
  subscription WatchJob($id: ID!) {
    job(id: $id) {
      id
      state
      done
      progress { percent message }
      result
    }
  }
`;

export function JobProgress({ id }) {
  const { data, error } = useSubscription(WATCH_JOB, { variables: { id } });
  if (error) return h("p", { role: "alert" }, error.message);
  const job = data?.job;
  const percent = job?.state === "SUCCESS" ? 100 : (job?.progress?.percent ?? 0);
  return h(
    "div",
    { "aria-busy": !job?.done },
    h("progress", { max: 100, value: percent }),
    h("span", null, job ? `${job.state} ${Math.round(percent)}%` : "waiting"),
  );
}
