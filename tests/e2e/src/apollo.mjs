// JobQL's Apollo Client: queries and mutations over HTTP, subscriptions over graphql-ws.
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache } from "@apollo/client";
import { SetContextLink } from "@apollo/client/link/context";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { getMainDefinition } from "@apollo/client/utilities";
import { createClient } from "graphql-ws";

export function createJobQLClient({ url, getToken = () => null, webSocketImpl }) {
  const credentials = () => {
    const token = getToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  };
  const http = new SetContextLink(({ headers }) => ({
    headers: { ...headers, ...credentials() },
  })).concat(new HttpLink({ uri: url }));
  const ws = new GraphQLWsLink(
    createClient({
      url: url.replace(/^http/, "ws"),
      connectionParams: credentials, // sent in connection_init
      webSocketImpl, // the browser's WebSocket when omitted
    }),
  );
  const isSubscription = ({ query }) => {
    const definition = getMainDefinition(query);
    return definition.kind === "OperationDefinition" && definition.operation === "subscription";
  };
  return new ApolloClient({
    link: ApolloLink.split(isSubscription, ws, http),
    cache: new InMemoryCache(), // a Job is cached once, as Job:<id>
  });
}
