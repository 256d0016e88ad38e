// Loopback ports: one free port from the kernel, and whether something answers on a port.
import { connect, createServer } from "node:net";

/** Ask the kernel for a port nobody listens on right now (callers retry if someone takes it before they do). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("could not read the port of a probe socket"))));
    });
  });
}

/** True when a TCP connection to 127.0.0.1:port is accepted. */
export function portAnswers(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
