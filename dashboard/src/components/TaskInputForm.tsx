// A task's input as a form, from the JSON Schema `tasks` gives: a field per string, number,
// integer and boolean property (a select for an enum), a JSON textarea for any other; the whole
// input as JSON when the schema lists no properties. New jobs and new schedules both use it.
import { useMemo, useState, type FormEvent, type ReactNode } from "react";

import type { TasksQuery } from "../__generated__/graphql";

export type TaskInfo = TasksQuery["tasks"][number];
type Schema = Record<string, unknown>;
type Kind = "string" | "number" | "integer" | "boolean" | "enum" | "json";

interface Field {
  name: string;
  kind: Kind;
  label: string;
  description?: string;
  required: boolean;
  initial: string | boolean;
  options?: string[];
  min?: number;
  max?: number;
  format?: string;
}

const WHOLE = "__input__";

function isObject(value: unknown): value is Schema {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Follows a local $ref, and takes the one non-null branch of an optional (anyOf [X, null]).
function resolve(schema: Schema, root: Schema): Schema {
  let current = schema;
  for (let i = 0; i < 5; i++) {
    const ref = current.$ref;
    if (typeof ref === "string" && ref.startsWith("#/")) {
      const target = ref.slice(2).split("/").reduce<unknown>((node, key) => (isObject(node) ? node[key] : undefined), root);
      if (!isObject(target)) return {};
      current = { ...target, ...Object.fromEntries(Object.entries(current).filter(([k]) => k !== "$ref")) };
      continue;
    }
    const branches = (current.anyOf ?? current.oneOf) as unknown;
    if (Array.isArray(branches)) {
      const real = branches.filter((b) => isObject(b) && b.type !== "null");
      if (real.length === 1 && isObject(real[0])) {
        current = { ...real[0], description: current.description, default: current.default, title: current.title ?? real[0].title };
        continue;
      }
    }
    break;
  }
  return current;
}

export function fieldsOf(schema: unknown): Field[] | null {
  if (!isObject(schema) || !isObject(schema.properties)) return null;
  const required = new Set(Array.isArray(schema.required) ? (schema.required as string[]) : []);
  return Object.entries(schema.properties).map(([name, raw]) => {
    const property = resolve(isObject(raw) ? raw : {}, schema);
    const type = property.type;
    const options = Array.isArray(property.enum) && property.enum.every((v) => typeof v === "string") ? (property.enum as string[]) : undefined;
    const kind: Kind = options
      ? "enum"
      : type === "string" || type === "number" || type === "integer" || type === "boolean"
        ? type
        : "json";
    const fallback = property.default;
    const initial =
      kind === "boolean"
        ? fallback === true
        : fallback === undefined
          ? ""
          : kind === "json"
            ? JSON.stringify(fallback)
            : String(fallback);
    return {
      name,
      kind,
      label: name,
      description: typeof property.description === "string" ? property.description : undefined,
      required: required.has(name),
      initial,
      options,
      min: typeof property.minimum === "number" ? property.minimum : undefined,
      max: typeof property.maximum === "number" ? property.maximum : undefined,
      format: typeof property.format === "string" ? property.format : undefined,
    };
  });
}

type Values = Record<string, string | boolean>;

function initialValues(fields: Field[] | null): Values {
  if (!fields) return { [WHOLE]: "{}" };
  return Object.fromEntries(fields.map((f) => [f.name, f.initial]));
}

// The input object, or the first field that does not read.
export function buildInput(fields: Field[] | null, values: Values): { input: Record<string, unknown> } | { error: string } {
  if (!fields) {
    try {
      const input = JSON.parse(String(values[WHOLE] || "{}")) as unknown;
      return isObject(input) ? { input } : { error: "The input must be a JSON object" };
    } catch (error) {
      return { error: `The input is not JSON: ${(error as Error).message}` };
    }
  }
  const input: Record<string, unknown> = {};
  for (const field of fields) {
    const value = values[field.name];
    if (field.kind === "boolean") {
      input[field.name] = value === true;
      continue;
    }
    const text = String(value ?? "");
    if (text.trim() === "") {
      if (field.required && field.kind !== "string") return { error: `${field.label} is required` };
      if (field.required) input[field.name] = text;
      continue;
    }
    if (field.kind === "number" || field.kind === "integer") {
      const n = Number(text);
      if (!Number.isFinite(n) || (field.kind === "integer" && !Number.isInteger(n))) {
        return { error: `${field.label} must be ${field.kind === "integer" ? "a whole number" : "a number"}` };
      }
      input[field.name] = n;
    } else if (field.kind === "json") {
      try {
        input[field.name] = JSON.parse(text);
      } catch {
        return { error: `${field.label} is not JSON (write strings in double quotes)` };
      }
    } else {
      input[field.name] = text;
    }
  }
  return { input };
}

interface Props {
  tasks: TaskInfo[];
  prefix: string;
  submitLabel: string;
  busy?: boolean;
  children?: ReactNode;
  onSubmit(task: string, input: Record<string, unknown>): void;
}

export function TaskInputForm({ tasks, prefix, submitLabel, busy, children, onSubmit }: Props) {
  const [taskName, setTaskName] = useState(tasks[0]?.name ?? "");
  const task = tasks.find((t) => t.name === taskName);
  const fields = useMemo(() => fieldsOf(task?.inputSchema), [task]);
  const [values, setValues] = useState<Values>(() => initialValues(fields));
  const [problem, setProblem] = useState<string | null>(null);

  function pick(name: string) {
    const next = tasks.find((t) => t.name === name);
    setTaskName(name);
    setValues(initialValues(fieldsOf(next?.inputSchema)));
    setProblem(null);
  }

  function set(name: string, value: string | boolean) {
    setValues((current) => ({ ...current, [name]: value }));
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    if (!task) return;
    const built = buildInput(fields, values);
    if ("error" in built) {
      setProblem(built.error);
      return;
    }
    setProblem(null);
    onSubmit(task.name, built.input);
  }

  return (
    <form className="task-form" onSubmit={submit}>
      <label className="field">
        <span>Task</span>
        <select data-testid={`${prefix}-task`} value={taskName} onChange={(e) => pick(e.target.value)}>
          {tasks.map((t) => (
            <option key={t.name} value={t.name}>
              {t.name}
            </option>
          ))}
        </select>
        {task?.description && <small>{task.description}</small>}
      </label>
      {fields === null ? (
        <label className="field wide">
          <span>Input (JSON)</span>
          <textarea data-testid={`${prefix}-json`} rows={4} value={String(values[WHOLE] ?? "")} onChange={(e) => set(WHOLE, e.target.value)} />
        </label>
      ) : (
        fields.map((field) => (
          <label key={`${taskName}.${field.name}`} className={field.kind === "json" ? "field wide" : field.kind === "boolean" ? "field check" : "field"}>
            <span>
              {field.label}
              {field.required && <b className="required"> *</b>}
            </span>
            {field.kind === "boolean" ? (
              <input
                type="checkbox"
                data-testid={`${prefix}-field-${field.name}`}
                checked={values[field.name] === true}
                onChange={(e) => set(field.name, e.target.checked)}
              />
            ) : field.kind === "enum" ? (
              <select data-testid={`${prefix}-field-${field.name}`} value={String(values[field.name] ?? "")} onChange={(e) => set(field.name, e.target.value)}>
                {!field.required && <option value="">—</option>}
                {field.options?.map((o) => (
                  <option key={o}>{o}</option>
                ))}
              </select>
            ) : field.kind === "json" ? (
              <textarea
                data-testid={`${prefix}-field-${field.name}`}
                rows={2}
                placeholder='JSON, e.g. {"a": 1} or "text"'
                value={String(values[field.name] ?? "")}
                onChange={(e) => set(field.name, e.target.value)}
              />
            ) : (
              <input
                data-testid={`${prefix}-field-${field.name}`}
                type={field.kind === "string" ? (field.format === "email" ? "email" : "text") : "number"}
                step={field.kind === "integer" ? 1 : "any"}
                min={field.min}
                max={field.max}
                required={field.required && field.kind === "string"}
                value={String(values[field.name] ?? "")}
                onChange={(e) => set(field.name, e.target.value)}
              />
            )}
            {field.description && <small>{field.description}</small>}
          </label>
        ))
      )}
      {children}
      {problem && <p className="form-problem">{problem}</p>}
      <div className="form-actions">
        <button type="submit" className="primary" data-testid={`${prefix}-submit`} disabled={busy || !task}>
          {busy ? "Sending…" : submitLabel}
        </button>
      </div>
    </form>
  );
}
