// What @apollo/persisted-query-lists requires of graphql and @apollo/client/core (see
// vite.config.ts): these three, not the whole of both packages.
export { print } from "graphql";
export { ApolloLink } from "@apollo/client/link";
export { Observable } from "rxjs";
