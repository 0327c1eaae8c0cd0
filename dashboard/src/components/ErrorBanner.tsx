import { dismiss, useProblems } from "../lib/errors";

// The errors operations ended with, newest first, until dismissed: never a silent failure.
export function ErrorBanner() {
  const problems = useProblems();
  if (!problems.length) return null;
  return (
    <div className="error-banner" role="alert" data-testid="error-banner">
      <ul>
        {problems.map((p) => (
          <li key={p.key}>
            <span className="error-op">{p.operation}</span>
            {p.code && <code className="error-code">{p.code}</code>}
            <span className="error-message">{p.message}</span>
            <button type="button" className="link" onClick={() => dismiss(p.key)} aria-label="Dismiss">
              ×
            </button>
          </li>
        ))}
      </ul>
      {problems.length > 1 && (
        <button type="button" className="link" onClick={() => dismiss()}>
          Dismiss all
        </button>
      )}
    </div>
  );
}
