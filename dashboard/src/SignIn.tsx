import { useState, type FormEvent } from "react";

// The API's own ways in: a bearer token or an API key, sent as `Authorization: Bearer <value>`.
export function SignIn({ refused, onSignIn }: { refused: boolean; onSignIn(credential: string): void }) {
  const [value, setValue] = useState("");

  function submit(event: FormEvent) {
    event.preventDefault();
    if (value.trim()) onSignIn(value.trim());
  }

  return (
    <div className="signin">
      <form onSubmit={submit} className="card">
        <h1>JobQL</h1>
        <p>This API needs a credential.</p>
        <label className="field">
          <span>Bearer token or API key</span>
          <input
            data-testid="signin-credential"
            type="password"
            autoComplete="off"
            autoFocus
            value={value}
            onChange={(e) => setValue(e.target.value)}
          />
        </label>
        {refused && (
          <p className="form-problem" data-testid="signin-refused">
            The API did not accept that credential (UNAUTHENTICATED): it is wrong, or it has expired.
          </p>
        )}
        <button type="submit" className="primary" data-testid="signin-submit" disabled={!value.trim()}>
          Sign in
        </button>
        <p className="muted small">Kept for this browser tab only.</p>
      </form>
    </div>
  );
}
