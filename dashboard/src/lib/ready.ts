import { useEffect } from "react";

// Browser tests time the first usable screen by this mark: set once the first screen shows data.
export function useReadyWhen(loaded: boolean): void {
  useEffect(() => {
    if (loaded && document.body.dataset.ready !== "1") document.body.dataset.ready = "1";
  }, [loaded]);
}
