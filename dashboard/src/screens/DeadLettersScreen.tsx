// Task messages workers could not run. No subscription streams them: the first page is refetched
// every few seconds, and at once after a requeue or discard.
import { useState } from "react";
import { useApolloClient, useQuery } from "@apollo/client/react";

import { DeadLettersDocument, DiscardDeadLetterDocument, RequeueDeadLetterDocument, type DeadLettersQuery } from "../__generated__/graphql";
import { bytes, shortId, time } from "../lib/format";
import { useReadyWhen } from "../lib/ready";
import { href } from "../lib/route";

type DeadLetter = DeadLettersQuery["deadLetters"]["nodes"][number];

export default function DeadLettersScreen() {
  const [size, setSize] = useState(50);
  const { data, loading, error, refetch } = useQuery(DeadLettersDocument, { variables: { first: size }, pollInterval: 5000 });
  useReadyWhen(Boolean(data));
  const letters = data?.deadLetters.nodes ?? [];
  const [requeued, setRequeued] = useState<Requeued | null>(null);

  return (
    <div>
      <header className="page-head">
        <h1>Dead letters</h1>
        <span className="muted">newest first; the last 1,000 are kept</span>
      </header>
      {requeued && (
        <p className="ok" data-testid="dead-letter-result">
          Requeued: job <a href={href.job(requeued.jobId)} className="mono">{requeued.jobId}</a> will run
          {requeued.retryOf && <> (a retry of {shortId(requeued.retryOf)}, which had failed for being set aside)</>}.
        </p>
      )}
      <section className="card">
        <table className="table">
          <thead>
            <tr>
              <th>At</th>
              <th>Queue</th>
              <th>Task</th>
              <th>Job</th>
              <th className="wide">Reason</th>
              <th className="num">Size</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {letters.map((letter) => (
              <Letter key={letter.id} letter={letter} onChanged={() => void refetch()} onRequeued={setRequeued} />
            ))}
            {!letters.length && (
              <tr>
                <td colSpan={7} className="empty">
                  {loading ? "Loading…" : error ? "The dead letters could not be read (see the error above)." : "No dead letter."}
                </td>
              </tr>
            )}
          </tbody>
        </table>
        {data?.deadLetters.hasNextPage && size < 100 && (
          <button type="button" onClick={() => setSize(100)}>
            Show up to 100
          </button>
        )}
      </section>
    </div>
  );
}

interface Requeued {
  jobId: string;
  retryOf: string | null;
}

function Letter({ letter, onChanged, onRequeued }: { letter: DeadLetter; onChanged(): void; onRequeued(what: Requeued): void }) {
  const client = useApolloClient();
  const [busy, setBusy] = useState(false);

  async function requeue() {
    setBusy(true);
    try {
      const result = await client.mutate({ mutation: RequeueDeadLetterDocument, variables: { id: letter.id } });
      const done = result.data?.requeueDeadLetter;
      if (done) onRequeued({ jobId: done.jobId, retryOf: done.retryOf });
    } catch {
      // The banner shows why.
    } finally {
      setBusy(false);
      onChanged();
    }
  }

  async function discard() {
    setBusy(true);
    try {
      await client.mutate({ mutation: DiscardDeadLetterDocument, variables: { id: letter.id } });
    } catch {
      // The banner shows why.
    } finally {
      setBusy(false);
      onChanged();
    }
  }

  return (
      <tr data-testid={`dead-letter-${letter.id}`} data-requeueable={letter.requeueable}>
        <td title={letter.at}>{time(letter.at)}</td>
        <td>{letter.queue}</td>
        <td>{letter.task ?? "—"}</td>
        <td>
          {letter.jobId ? (
            <a className="mono" href={href.job(letter.jobId)} title={letter.jobId}>
              {shortId(letter.jobId)}
            </a>
          ) : (
            "—"
          )}
        </td>
        <td className="wide">
          {letter.reason}
          {letter.owner && <span className="muted"> · {letter.owner}</span>}
          <details className="raw">
            <summary>raw message</summary>
            <pre className="json">{letter.raw}</pre>
          </details>
        </td>
        <td className="num">{bytes(letter.size)}</td>
        <td>
          <div className="actions">
          <button
            type="button"
            data-testid={`dead-letter-requeue-${letter.id}`}
            disabled={busy || !letter.requeueable}
            title={letter.unreadable ?? "Put the message back on its queue"}
            onClick={() => void requeue()}
          >
            Requeue
          </button>
          <button type="button" data-testid={`dead-letter-discard-${letter.id}`} disabled={busy} onClick={() => void discard()}>
            Discard
          </button>
          </div>
          {!letter.requeueable && letter.unreadable && (
            <div className="muted small note" data-testid={`dead-letter-unreadable-${letter.id}`}>
              Cannot be requeued: {letter.unreadable}
            </div>
          )}
        </td>
      </tr>
  );
}
