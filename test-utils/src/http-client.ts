/** A small HTTPS/HTTP client for the receiver's HTTP listener tests (a CA, headers, a body; node:https, since fetch takes no CA). */
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'

/** One answer, body read whole. */
export interface HttpAnswer {
  readonly status: number
  readonly headers: Record<string, string | string[] | undefined>
  readonly text: string
}

/** Send one request; `ca` trusts the receiver's certificate. */
export function httpCall(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string; ca?: string | Buffer } = {}): Promise<HttpAnswer> {
  const u = new URL(url)
  const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, {
    method: opts.method ?? 'GET',
    headers: opts.headers ?? {},
    ...(opts.ca === undefined ? {} : { ca: opts.ca }),
    agent: false,
  })
  return new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

/** Read an event stream until `count` events arrived (or it ends); returns them as `{event, data}`. */
export function readEvents(
  url: string,
  count: number,
  opts: { headers?: Record<string, string>; ca?: string | Buffer } = {},
): Promise<{ status: number; events: Array<{ event: string; data: string }> }> {
  const u = new URL(url)
  const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { headers: opts.headers ?? {}, ...(opts.ca === undefined ? {} : { ca: opts.ca }), agent: false })
  return new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const events: Array<{ event: string; data: string }> = []
      let buf = ''
      const done = (): void => {
        req.destroy()
        resolve({ status: res.statusCode ?? 0, events })
      }
      if (res.statusCode !== 200) {
        res.resume()
        res.on('end', done)
        return
      }
      res.on('data', (c: Buffer) => {
        buf += c.toString('utf8')
        let i = buf.indexOf('\n\n')
        while (i >= 0) {
          const block = buf.slice(0, i)
          buf = buf.slice(i + 2)
          const ev = /^event: (.*)$/m.exec(block)?.[1] ?? 'message'
          const data = /^data: (.*)$/m.exec(block)?.[1] ?? ''
          events.push({ event: ev, data })
          if (events.length >= count) return done()
          i = buf.indexOf('\n\n')
        }
      })
      res.on('end', done)
    })
    req.on('error', reject)
    req.end()
  })
}
