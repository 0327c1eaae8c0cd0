// Every error an operation ends with, as the banner shows it: the message and extensions.code.
import { useSyncExternalStore } from "react";
import { CombinedGraphQLErrors, CombinedProtocolErrors, ServerError } from "@apollo/client";

export interface Problem {
  key: number;
  operation: string;
  message: string;
  code: string | null;
}

export function describe(error: unknown): Array<{ message: string; code: string | null }> {
  if (CombinedGraphQLErrors.is(error) || CombinedProtocolErrors.is(error)) {
    return error.errors.map((e) => ({
      message: e.message,
      code: typeof e.extensions?.code === "string" ? e.extensions.code : null,
    }));
  }
  if (ServerError.is(error)) {
    try {
      const body = JSON.parse(error.bodyText) as { errors?: Array<{ message: string; extensions?: { code?: string } }> };
      if (body.errors?.length) {
        return body.errors.map((e) => ({ message: e.message, code: e.extensions?.code ?? null }));
      }
    } catch {
      // not JSON: the status says it
    }
    return [{ message: `The server answered HTTP ${error.statusCode}`, code: `HTTP_${error.statusCode}` }];
  }
  if (error instanceof Error) return [{ message: error.message, code: null }];
  if (error && typeof error === "object" && "code" in error && "reason" in error) {
    // A WebSocket close event.
    const close = error as { code: number; reason: string };
    return [{ message: close.reason || "The live connection closed", code: `WS_${close.code}` }];
  }
  return [{ message: String(error), code: null }];
}

export function isUnauthenticated(error: unknown): boolean {
  if (ServerError.is(error) && error.statusCode === 401) return true;
  return describe(error).some((e) => e.code === "UNAUTHENTICATED");
}

let problems: Problem[] = [];
let counter = 0;
const listeners = new Set<() => void>();

function emit(): void {
  for (const listener of listeners) listener();
}

export function report(operation: string, error: unknown): void {
  const added = describe(error).map((e) => ({ key: ++counter, operation, ...e }));
  // The newest first; the same message again replaces the older one.
  const fresh = new Set(added.map((p) => `${p.operation}|${p.code}|${p.message}`));
  problems = [...added, ...problems.filter((p) => !fresh.has(`${p.operation}|${p.code}|${p.message}`))].slice(0, 5);
  emit();
}

export function dismiss(key?: number): void {
  problems = key === undefined ? [] : problems.filter((p) => p.key !== key);
  emit();
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function useProblems(): Problem[] {
  return useSyncExternalStore(subscribe, () => problems);
}
