import { createContext, useContext } from "react";

export interface Viewer {
  owner: string | null;
  admin: boolean;
}

export const ViewerContext = createContext<Viewer>({ owner: null, admin: false });

export function useViewer(): Viewer {
  return useContext(ViewerContext);
}
