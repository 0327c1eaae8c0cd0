export function ProgressBar({ percent, label, testId }: { percent: number | null | undefined; label?: string | null; testId?: string }) {
  const value = percent == null ? null : Math.max(0, Math.min(100, percent));
  return (
    <div className="progress" data-testid={testId} data-percent={value ?? ""} title={label ?? undefined}>
      <div className="progress-track">
        <div className="progress-fill" style={{ width: `${value ?? 0}%` }} />
      </div>
      <span className="progress-text">
        {value == null ? "" : `${Math.round(value)}%`}
        {label ? ` ${label}` : ""}
      </span>
    </div>
  );
}
