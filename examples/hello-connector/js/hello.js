// Hello Bank webhooks -> balance changes, in JavaScript.
//
// The same connector as the Rust and Python examples beside this one: Hello
// Bank posts `{"id", "account", "amount", "memo"}` and signs the raw body
// with hex HMAC-SHA256 in `X-Signature`.
//
// componentize-js builds this module against the WIT world
// `webhook-connector` (see build.sh). WIT names become camelCase, `u64`
// is a BigInt, `option` is a value or `undefined`, `list<u8>` a Uint8Array.

import { get as configGet } from 'soundbox:connector/config@0.1.1';

// The dedupe provider: every Hello Bank connector uses the same name, so a
// payment seen twice (a retry, or a second connector) is announced once.
const PROVIDER = 'hello-bank';

// A `connector-error` for the gateway. The bindings turn a thrown object
// with a `payload` into the `err` side of the result; any other exception
// is a bug and fails the call with a 500.
class ConnectorError extends Error {
  constructor(tag, reason) {
    super(`${tag}: ${reason}`);
    this.payload = { tag, val: reason };
  }
}

export const webhook = {
  // Async so it can await WebCrypto; the component waits for the promise.
  async handle(request) {
    const secret = configGet('secret');
    if (!secret) {
      throw new ConnectorError('fatal', 'config key `secret` is not set');
    }
    await verify(request, secret);
    const change = parse(request.body);
    return {
      changes: [change],
      reply: {
        status: 200,
        headers: [['content-type', 'application/json']],
        body: new TextEncoder().encode('{"ok":true}'),
      },
    };
  },
};

// The first header called `name` (the gateway lower-cases names).
function header(request, name) {
  const found = request.headers.find(([key]) => key === name);
  return found === undefined ? undefined : found[1];
}

// X-Signature = hex HMAC-SHA256(secret, raw body), either hex case.
async function verify(request, secret) {
  const given = header(request, 'x-signature');
  if (given === undefined) {
    throw new ConnectorError('unauthorized', 'missing X-Signature');
  }
  const signature = fromHex(given.trim());
  const key = await crypto.subtle.importKey(
    'raw',
    new TextEncoder().encode(secret),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['verify'],
  );
  // WebCrypto's verify compares in constant time.
  const valid =
    signature !== undefined &&
    (await crypto.subtle.verify('HMAC', key, signature, request.body));
  if (!valid) {
    throw new ConnectorError('unauthorized', 'bad signature');
  }
}

// Hex to bytes; undefined for anything that is not hex.
function fromHex(hex) {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    return undefined;
  }
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

// Hello Bank's JSON -> one incoming balance change.
function parse(body) {
  let payment;
  try {
    payment = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch (e) {
    throw new ConnectorError('bad-request', `bad JSON: ${e.message}`);
  }
  if (payment === null || typeof payment !== 'object' || Array.isArray(payment)) {
    throw new ConnectorError('bad-request', 'bad JSON: expected an object');
  }
  const id = textField(payment, 'id');
  const account = textField(payment, 'account');
  // JSON numbers are doubles here: beyond 2^53 they are no longer exact.
  const amount = payment.amount;
  if (!Number.isSafeInteger(amount) || amount <= 0) {
    throw new ConnectorError('bad-request', '`amount` must be a positive integer (VND)');
  }
  const memo = payment.memo ?? undefined;
  if (memo !== undefined && typeof memo !== 'string') {
    throw new ConnectorError('bad-request', '`memo` must be a string');
  }
  return {
    provider: PROVIDER,
    transactionId: id,
    account,
    amount: BigInt(amount),
    currency: 'VND',
    direction: 'incoming',
    reference: undefined,
    counterparty: undefined,
    content: memo,
    occurredAtMs: undefined,
    extra: [],
  };
}

function textField(payment, key) {
  const value = payment[key];
  if (typeof value !== 'string' || value === '') {
    throw new ConnectorError('bad-request', `\`${key}\` must be a non-empty string`);
  }
  return value;
}
