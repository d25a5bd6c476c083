// The grainline DR dashboard's only script, served by the receiver
// (`/assets/dashboard.js`; CSP `script-src 'self'`). Plain browser
// JavaScript, no library, no build step. Every value from the store (VM and
// disk names, error messages) is written with textContent or DOM APIs, never
// as HTML. Data comes from the JSON API (`/api/v1/…`) with the session cookie;
// live updates from its event stream (`/api/v1/events`).
;(() => {
  const page = document.body.dataset.page

  /** @param {string} tag @param {Record<string,string>} [attrs] @param {Array<Node|string>} [children] */
  function el(tag, attrs = {}, children = []) {
    const e = document.createElement(tag)
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v)
    for (const c of children) e.append(typeof c === 'string' ? document.createTextNode(c) : c)
    return e
  }
  const SVG = 'http://www.w3.org/2000/svg'
  function svg(tag, attrs = {}) {
    const e = document.createElementNS(SVG, tag)
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
    return e
  }

  function bytes(n) {
    if (n === null || n === undefined) return '-'
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
    let i = 0
    let v = n
    while (v >= 1024 && i < u.length - 1) {
      v /= 1024
      i++
    }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`
  }
  function duration(s) {
    if (s === null || s === undefined) return 'never'
    if (s < 120) return `${Math.round(s)} s`
    if (s < 7200) return `${Math.floor(s / 60)} min`
    if (s < 172800) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`
  }
  const STATE_CLASS = { OK: 'ok', WARNING: 'warning', CRITICAL: 'critical', UNKNOWN: 'unknown', ok: 'ok', warning: 'warning', critical: 'critical' }
  /** A coloured badge that also says its state in words. */
  function badge(state, text) {
    return el('span', { class: `badge ${STATE_CLASS[state] ?? 'unknown'}` }, [text ?? state])
  }
  /** When the whole mirror was last proven equal to its source (certify, a scrub rotation, a full resync), when the store records it. */
  function provenText(d) {
    const p = d.proven
    if (p === undefined) return null
    if (p === null) return 'never fully proven'
    return `fully proven by ${p.kind} at cycle ${p.cycle}, ${new Date(p.at).toLocaleString()}`
  }
  /** A point older than a resync that repaired the mirror, with no certify digest to prove it (store-overview.ts unprovenBeforeRepair). */
  function beforeRepair(p) {
    return p.unprovenBeforeRepair === undefined ? '' : ` (before the repair at cycle ${p.unprovenBeforeRepair}: unproven)`
  }
  function checkText(d) {
    const parts = []
    parts.push(`trivial ${d.trivial === null ? 'never run' : d.trivial.ok ? 'ok' : 'MISMATCH'}`)
    parts.push(`certify ${d.certify === null ? 'never run' : `${d.certify.algorithm} ${d.certify.ok ? 'ok' : 'MISMATCH'}`}`)
    if (d.diverged !== null) parts.push(`DIVERGED: ${d.diverged.reason}`)
    const proven = provenText(d)
    if (proven !== null) parts.push(proven)
    return `${d.name}: ${parts.join(', ')}`
  }
  function checksState(vm) {
    const bad = vm.disks.some((d) => (d.trivial && !d.trivial.ok) || (d.certify && !d.certify.ok) || d.diverged !== null)
    return bad ? 'critical' : 'ok'
  }
  /** The cycle in flight: a progress bar with its numbers in words. */
  function liveCell(vm) {
    const live = vm.live
    if (live === null || live === undefined) {
      if (vm.inflightCycle > 0) return el('span', {}, [`cycle ${vm.inflightCycle} interrupted (resumes at the next run)`])
      return el('span', { class: 'hint' }, ['none'])
    }
    const total = live.disks.reduce((n, d) => n + d.totalBytes, 0)
    const done = live.disks.reduce((n, d) => n + Math.min(d.doneBytes, d.totalBytes || d.doneBytes), 0)
    const pct = total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : 0
    const label = `cycle ${live.cycle}: ${bytes(done)} of ${bytes(total)} applied (${pct} %)`
    const p = el('progress', { max: String(Math.max(total, 1)), value: String(Math.min(done, Math.max(total, 1))), 'aria-label': `progress of ${vm.vm}` })
    return el('span', { class: 'live', 'data-done': String(done), 'data-total': String(total) }, [p, ' ', el('span', { class: 'live-text' }, [label])])
  }
  function setConnection(text) {
    const c = document.getElementById('connection')
    if (c !== null) c.textContent = text
  }

  function renderOverview(o) {
    const summary = document.getElementById('summary')
    summary.textContent = ''
    summary.append(badge(o.state), ' ', o.summary.replace(/^GRAINLINE \w+ - /, ''))
    const tbody = document.querySelector('#vms tbody')
    const rows = []
    for (const vm of o.vms) {
      const link = el('a', { href: `/vm?name=${encodeURIComponent(vm.vm)}` })
      link.textContent = vm.vm
      const name = el('th', { scope: 'row', class: 'vm-name' }, [link])
      const state = el('td', {}, [badge(vm.health.state)])
      if (vm.health.problems.length > 0) state.append(el('div', { class: 'hint' }, [vm.health.problems.join('; ')]))
      const committed = el('td', {}, [vm.committedCycle > 0 ? `cycle ${vm.committedCycle}, ${new Date(vm.committedAt).toLocaleString()}` : 'never'])
      const rpo = el('td', {}, [badge(vm.rpo.state, `${vm.rpo.state}: ${duration(vm.rpo.ageSeconds)} ${vm.rpo.ageSeconds === null ? '' : 'old '}(target ${duration(vm.rpo.targetSeconds)})`)])
      const checks = el('td', {}, [badge(checksState(vm), checksState(vm)), ...vm.disks.map((d) => el('div', { class: 'hint' }, [checkText(d)]))])
      const points = el('td', {}, [
        vm.restorePoints.length === 0 ? 'none' : `${vm.restorePoints.length}: ${vm.restorePoints.map((p) => `cycle ${p.cycle}${p.held ? ' (held)' : ''}${beforeRepair(p)}`).join(', ')}`,
      ])
      rows.push(el('tr', { 'data-vm': vm.vm }, [name, state, committed, rpo, checks, el('td', {}, [liveCell(vm)]), points, el('td', {}, [bytes(vm.usedBytes)])]))
    }
    if (rows.length === 0) rows.push(el('tr', {}, [el('td', { colspan: '8' }, ['No mirrors in the store yet.'])]))
    tbody.replaceChildren(...rows)
  }

  /** A bar chart (inline SVG) of one series, with an equivalent table for screen readers. */
  function barChart(title, entries, value, format, cls) {
    const W = 640
    const H = 180
    const pad = 28
    const max = Math.max(1, ...entries.map(value))
    const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `${title}: ${entries.length} cycles, largest ${format(max)}` })
    const bw = entries.length === 0 ? 0 : (W - 2 * pad) / entries.length
    entries.forEach((e, i) => {
      const h = Math.max(1, ((H - 2 * pad) * value(e)) / max)
      const r = svg('rect', { class: `bar ${cls}`, x: pad + i * bw + bw * 0.1, y: H - pad - h, width: Math.max(1, bw * 0.8), height: h })
      const tip = svg('title')
      tip.textContent = `cycle ${e.cycle}: ${format(value(e))}`
      r.append(tip)
      g.append(r)
    })
    g.append(svg('line', { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: '#4a5361' }))
    const top = svg('text', { x: pad, y: pad - 8 })
    top.textContent = format(max)
    g.append(top)
    if (entries.length > 0) {
      const first = svg('text', { x: pad, y: H - 8 })
      first.textContent = `cycle ${entries[0].cycle}`
      const last = svg('text', { x: W - pad, y: H - 8, 'text-anchor': 'end' })
      last.textContent = `cycle ${entries[entries.length - 1].cycle}`
      g.append(first, last)
    }
    const table = el('table', {}, [
      el('thead', {}, [el('tr', {}, [el('th', { scope: 'col' }, ['Cycle']), el('th', { scope: 'col' }, ['Committed']), el('th', { scope: 'col' }, [title])])]),
      el(
        'tbody',
        {},
        entries.map((e) => el('tr', {}, [el('td', {}, [String(e.cycle)]), el('td', {}, [new Date(e.committedAt).toLocaleString()]), el('td', {}, [format(value(e))])])),
      ),
    ])
    return el('figure', {}, [el('figcaption', {}, [title]), g, el('details', {}, [el('summary', {}, ['as a table']), table])])
  }

  function renderVm(d) {
    const vm = d.vm
    document.title = `grainline DR dashboard: ${vm.vm}`
    document.getElementById('vm-name').textContent = vm.vm
    const st = document.getElementById('vm-state')
    st.textContent = ''
    st.append(badge(vm.health.state), ' ', badge(vm.rpo.state, `RPO ${vm.rpo.state}: ${duration(vm.rpo.ageSeconds)} (target ${duration(vm.rpo.targetSeconds)})`), ' ')
    st.append(`committed cycle ${vm.committedCycle}; space used ${bytes(vm.usedBytes)}; in flight: `, liveCell(vm))
    if (vm.health.problems.length > 0) st.append(el('div', { class: 'hint' }, [vm.health.problems.join('; ')]))
    document
      .querySelector('#disks tbody')
      .replaceChildren(
        ...vm.disks.map((k) =>
          el('tr', {}, [
            el('th', { scope: 'row' }, [k.name]),
            el('td', {}, [String(k.committedCycle)]),
            el('td', {}, [bytes(k.capacity)]),
            el('td', {}, [k.trivial === null ? 'never run' : k.trivial.ok ? 'ok' : 'MISMATCH']),
            el('td', {}, [k.certify === null ? 'never run' : `${k.certify.algorithm} ${k.certify.ok ? 'ok' : 'MISMATCH'}`]),
            el('td', {}, [k.diverged !== null ? 'DIVERGED' : k.modified ? 'MODIFIED' : 'ok']),
            el('td', {}, [provenText(k) ?? '-']),
          ]),
        ),
      )
    const points = vm.restorePoints.map((p) => el('li', {}, [`cycle ${p.cycle}, ${new Date(p.committedAt).toLocaleString()}, ${bytes(p.bytes)}${p.held ? ', held' : ''}${beforeRepair(p)}`]))
    document.getElementById('points').replaceChildren(...(points.length > 0 ? points : [el('li', {}, ['none'])]))
    const h = d.history
    document.getElementById('charts').replaceChildren(
      barChart('Bytes changed per cycle', h, (e) => e.dataBytes + e.zeroBytes, bytes, 'changed'),
      barChart('Bytes sent per cycle', h, (e) => e.dataBytes, bytes, 'sent'),
      barChart(
        'Duration per cycle',
        h,
        (e) => e.seconds,
        (s) => `${s.toFixed(s < 10 ? 2 : 0)} s`,
        'duration',
      ),
    )
    const errs = [...d.errors].reverse().map((e) => el('li', {}, [`${new Date(e.at).toLocaleString()}, cycle ${e.cycle}: ${e.code} `, el('span', {}, [e.message])]))
    document.getElementById('errors').replaceChildren(...(errs.length > 0 ? errs : [el('li', {}, ['none since the receiver started'])]))
  }

  async function getJson(url) {
    const r = await fetch(url, { credentials: 'same-origin', cache: 'no-store' })
    if (r.status === 401) {
      location.assign('/login')
      throw new Error('not logged in')
    }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`)
    return r.json()
  }

  /** Live updates: the event stream pushes the overview; the VM page refetches its detail then. */
  function live(onStatus) {
    const es = new EventSource('/api/v1/events')
    es.addEventListener('status', (ev) => {
      setConnection('Live: updates as the receiver works.')
      onStatus(JSON.parse(ev.data))
    })
    es.addEventListener('error', () => setConnection('Connection to the receiver lost: retrying…'))
  }

  if (page === 'login') {
    const failed = new URLSearchParams(location.search).get('failed')
    const p = document.getElementById('login-failed')
    if (failed !== null) {
      p.hidden = false
      p.textContent = failed === '403' ? "Refused: that is not a viewer token (an agent's token does not open the dashboard)." : 'Refused: unknown token.'
    }
  } else if (page === 'overview') {
    getJson('/api/v1/status').then(renderOverview, (e) => setConnection(String(e.message)))
    live(renderOverview)
  } else if (page === 'vm') {
    const name = new URLSearchParams(location.search).get('name') ?? ''
    const url = `/api/v1/vms/${encodeURIComponent(name)}`
    let pending = false
    const refresh = () => {
      if (pending) return
      pending = true
      getJson(url)
        .then(renderVm, (e) => setConnection(String(e.message)))
        .finally(() => {
          pending = false
        })
    }
    refresh()
    live(refresh)
  }
})()
