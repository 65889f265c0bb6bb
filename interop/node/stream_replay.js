// Node's amqplib (promise API), as RabbitMQ's stream examples for AMQP 0-9-1 clients do it:
// declare a stream, publish COUNT messages with confirms, then read them back from "first" with a
// prefetch and manual acks, twice (reading removes nothing). Prints the offsets read, as JSON.
// Usage: node stream_replay.js AMQP_URL STREAM COUNT
"use strict";
const amqp = require("amqplib");
const [url, stream, countText] = process.argv.slice(2);
const count = Number(countText);

async function readAll(connection) {
  const channel = await connection.createChannel();
  await channel.prefetch(10);
  const offsets = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${offsets.length} of ${count} arrived`)), 15000);
    channel.consume(stream, (message) => {
      offsets.push(Number(message.properties.headers["x-stream-offset"]));
      channel.ack(message);
      if (offsets.length === count) { clearTimeout(timer); resolve(); }
    }, { noAck: false, arguments: { "x-stream-offset": "first" } }).catch(reject);
  });
  await channel.close();
  return offsets;
}

async function main() {
  const connection = await amqp.connect(url);
  const publisher = await connection.createConfirmChannel();
  await publisher.assertQueue(stream, { durable: true, arguments: { "x-queue-type": "stream" } });
  for (let i = 0; i < count; i++) publisher.sendToQueue(stream, Buffer.from(`event ${i}`));
  await publisher.waitForConfirms();
  const first = await readAll(connection);
  const second = await readAll(connection);
  await connection.close();
  console.log(JSON.stringify({ first, second }));
}

main().catch((error) => { console.error(error.message); process.exit(1); });
