import { json } from "../lib/format";

export function Json({ value }: { value: unknown }) {
  if (value === null || value === undefined) return <span className="muted">—</span>;
  return <pre className="json">{json(value)}</pre>;
}
