// The sign-in credential (a bearer token or an API key), kept for this tab only.
const KEY = "jobql.credential";

export function readCredential(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function saveCredential(value: string | null): void {
  try {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage refused (private mode): the credential lives until the page reloads.
  }
}
