// Node's amqplib, callback API: publish N messages on a channel, then close the connection at
// once. amqplib multiplexes channels round-robin, so its connection.close can overtake publishes
// still queued on the channel: it keeps writing after close. A broker that closes the socket
// right after close-ok resets it, and the close callback never runs (the program hangs).
// Usage: node publish_then_close.js AMQP_URL QUEUE COUNT
"use strict";
const amqp = require("amqplib/callback_api");
const [url, queue, count] = process.argv.slice(2);

amqp.connect(url, (err, connection) => {
  if (err) { console.error("connect failed:", err.message); process.exit(2); }
  connection.on("error", (e) => { console.error("connection error:", e.message); process.exit(3); });
  connection.createChannel((err2, channel) => {
    if (err2) { console.error("channel failed:", err2.message); process.exit(4); }
    channel.assertQueue(queue, { durable: false }, (err3) => {
      if (err3) { console.error("declare failed:", err3.message); process.exit(5); }
      const body = Buffer.alloc(1024, 120);
      for (let i = 0; i < Number(count); i++) channel.sendToQueue(queue, body);
      connection.close((err4) => {
        if (err4) { console.error("close failed:", err4.message); process.exit(6); }
        console.log("closed");
        process.exit(0);
      });
    });
  });
});
