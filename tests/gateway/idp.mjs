// A mock OpenID Connect provider for tests/gateway.rs, on 127.0.0.1 only: oauth2-mock-server
// (made for tests: its /authorize signs the user in at once, without a login form) issuing
// ID tokens for ONE known user, given as JSON in IDP_USER:
//   {"sub": "...", "email": "...", "preferred_username": "...", "name": "..."}
// Prints one line `{"issuer": "http://127.0.0.1:PORT"}` once it listens; runs until killed.
import { OAuth2Server } from 'oauth2-mock-server';

const user = JSON.parse(process.env.IDP_USER ?? '');
const port = Number(process.argv[2] ?? 0);
const claims = {
  sub: user.sub,
  email: user.email,
  email_verified: true,
  preferred_username: user.preferred_username,
  name: user.name,
};

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
// Access and ID tokens both carry the user (the mock's default subject is "johndoe").
server.service.on('beforeTokenSigning', (token) => Object.assign(token.payload, claims));
server.service.on('beforeUserinfo', (response) => {
  response.body = { ...claims };
});
await server.start(port, '127.0.0.1');
// The mock names itself `localhost`; oauth2-proxy compares the issuer byte for byte.
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
console.log(JSON.stringify({ issuer: server.issuer.url }));

// Exit at once: server.stop() would wait for the gateway's keep-alive connections.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
