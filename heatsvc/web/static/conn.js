// The page's WebSocket to the gateway: JSON text messages and binary grid frames, a visible state,
// automatic reconnect with backoff, and the subscription sent again after every reconnect.

export const FRAME_MAGIC = 'HSG1';
const HEADER = 32;

/** The fields of a binary grid frame (see heatsvc/web/frames.py for the layout). */
export function parseFrame(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  if (magic !== FRAME_MAGIC) throw new Error('not a grid frame');
  const rows = dv.getUint16(12, true), columns = dv.getUint16(14, true), n = rows * columns;
  return {
    view: dv.getUint32(4, true), seq: dv.getUint32(8, true), rows, columns,
    vMax: dv.getFloat64(16, true), boost: dv.getFloat32(24, true),
    long: new Uint8Array(buf, HEADER, n), short: new Uint8Array(buf, HEADER + n, n),
  };
}

export class Connection {
  /** onMessage(json), onFrame(frame), onState(state, detail); subscription() is sent on every open. */
  constructor({ onMessage, onFrame, onState, subscription }) {
    Object.assign(this, { onMessage, onFrame, onState, subscription });
    this.delay = 500;
    this.ws = null;
    this.opens = 0;
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
  }

  connect() {
    this.onState(this.opens ? 'reconnecting' : 'connecting', '');
    const ws = new WebSocket(this.url());
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      this.opens += 1;
      this.delay = 500;
      this.onState('live', '');
      this.send(this.subscription());
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') this.onMessage(JSON.parse(ev.data));
      else this.onFrame(parseFrame(ev.data));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      if (ev.code === 4401) { location.assign('/login'); return; }   // the token is asked for once, there
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, 5000);
      this.onState('reconnecting', `in ${(wait / 1000).toFixed(1)} s`);
      setTimeout(() => this.connect(), wait);
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && msg) this.ws.send(JSON.stringify(msg));
  }
}
