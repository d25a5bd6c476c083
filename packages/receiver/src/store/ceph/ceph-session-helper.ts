/**
 * The Python of a VM's session client (ceph-lock.ts): one long-lived RADOS
 * client per locked VM that takes and renews the lease, fences the holder
 * before it, and runs every metadata write of the session (state object,
 * logs, history, snapshots, image creation and removal), so that those
 * writes come from one known client address (and the VM's key in the pool's
 * VM index, ceph-vm-index.ts). Arguments: conf, client id,
 * keyring, pool, lock object, lock name, cookie, description, lease seconds.
 *
 * Output lines (JSON): `{"event":"locked","addr":A,"fenced":[A…]}` or
 * `{"event":"busy"}` first; `{"event":"lost","errno":N,"msg":M}` when a
 * renewal fails (every later request is then refused with that error); `{"id":N,"ok":true}` /
 * `{"id":N,"ok":false,"errno":N,"msg":M}` per request, in order. Input lines:
 * `{"id":N,"op":…}` requests; `{"op":"release"}` removes this session's
 * registrations and unlocks (a clean end); EOF without it only unlocks, so
 * the next holder fences this session's clients (a receiver killed with -9
 * may leave a helper finishing a write).
 *
 * Registrations: omap keys `<cookie>.<role>` of the lock object whose values
 * are RADOS client addresses (`Rados.get_addrs()`), one per client that may
 * write for this lease (this client, each librbd writer of rbd-image.ts). A
 * receiver taking the lease blocklists (`ceph osd blocklist add`) every
 * address registered under another cookie, waits for the OSD map that holds
 * the blocklist, removes those keys, registers itself, and only then reports
 * `locked`.
 */
import { PY_CONNECT } from './rbd-image-helper.ts'

export const SESSION_HELPER = `
import sys, json, base64, threading, rados, rbd
${PY_CONNECT}
conf, cid, keyring, pool, obj, name, cookie, desc, dur = sys.argv[1:10]
dur = int(dur)
out_lock = threading.Lock()
def say(d):
    with out_lock:
        sys.stdout.write(json.dumps(d) + '\\n')
        sys.stdout.flush()
def errinfo(e):
    return {'errno': int(getattr(e, 'errno', 0) or 0), 'msg': (type(e).__name__ + ': ' + str(e))[:2000]}
try:
    c, io = connect(conf, cid, keyring, pool)
except Exception as e:
    say(dict({'event': 'error', 'what': 'connect'}, **errinfo(e))); sys.exit(2)
try:
    io.lock_exclusive(obj, name, cookie, desc=desc, duration=dur)
except (rados.ObjectBusy, rados.ObjectExists):
    say({'event': 'busy'}); sys.exit(16)
mine = cookie + '.'
def omap():
    with rados.ReadOpCtx() as op:
        it, ret = io.get_omap_vals(op, '', '', 100000)
        io.operate_read_op(op, obj)
        return dict(it)
def set_keys(keys, vals):
    with rados.WriteOpCtx() as op:
        io.set_omap(op, tuple(keys), tuple(vals))
        io.operate_write_op(op, obj)
def rm_keys(keys):
    if not keys: return
    with rados.WriteOpCtx() as op:
        io.remove_omap_keys(op, tuple(keys))
        io.operate_write_op(op, obj)
def renew():
    io.lock_exclusive(obj, name, cookie, desc=desc, duration=dur, flags=2)
try:
    stale = {k: v for k, v in omap().items() if not k.startswith(mine)}
    fenced = sorted(set(v.decode('utf-8', 'replace') for v in stale.values()))
    for a in fenced:
        c.blocklist_add(a)
    if fenced:
        c.wait_for_latest_osdmap()
    rm_keys(list(stale.keys()))
    me = c.get_addrs()
    set_keys([mine + 'session'], [me.encode()])
    renew()
except Exception as e:
    try: io.unlock(obj, name, cookie)
    except Exception: pass
    say(dict({'event': 'error', 'what': 'fence'}, **errinfo(e))); sys.exit(3)
say({'event': 'locked', 'addr': me, 'fenced': fenced})
stop = threading.Event()
lost = []
def renewer():
    while not stop.wait(max(1, dur / 3)):
        try:
            renew()
        except Exception as e:
            lost.append(errinfo(e))
            say(dict({'event': 'lost'}, **lost[0]))
            return
threading.Thread(target=renewer, daemon=True).start()
def image_op(req, fn):
    with rbd.Image(io, req['image']) as img:
        fn(img)
def grow(img, size):
    if img.size() < size: img.resize(size)
def purge(img):
    for s in list(img.list_snaps()): img.remove_snap(s['name'])
clean = False
for line in sys.stdin:
    try:
        req = json.loads(line)
    except Exception:
        break
    op = req.get('op')
    if op == 'release':
        clean = True
        break
    if lost:
        # the lease is gone: nothing more is written for it
        say(dict({'id': req.get('id'), 'ok': False}, **lost[0]))
        continue
    try:
        if op == 'renew': renew()
        elif op == 'put': io.write_full(req['obj'], base64.b64decode(req['data']))
        elif op == 'rm': io.remove_object(req['obj'])
        elif op == 'snap_create': image_op(req, lambda i: i.create_snap(req['snap']))
        elif op == 'snap_rm': image_op(req, lambda i: i.remove_snap(req['snap']))
        elif op == 'snap_rollback': image_op(req, lambda i: i.rollback_to_snap(req['snap']))
        elif op == 'grow': image_op(req, lambda i: grow(i, int(req['size'])))
        elif op == 'create': rbd.RBD().create(io, req['image'], int(req['size']))
        elif op == 'snap_size':
            # read only: the size of one snapshot of an image (-1: no such snapshot; no such image: ENOENT)
            with rbd.Image(io, req['image'], read_only=True) as img:
                found = [x for x in img.list_snaps() if x['name'] == req['snap']]
            say({'id': req.get('id'), 'ok': True, 'size': int(found[0]['size']) if found else -1})
            continue
        elif op == 'stat':
            # read only: the size of an object (no such object: ENOENT)
            size, _ = io.stat(req['obj'])
            say({'id': req.get('id'), 'ok': True, 'size': int(size)})
            continue
        elif op == 'read':
            # read only: at most len bytes of an object from off (fewer at its end; none past it)
            data = io.read(req['obj'], int(req['len']), int(req['off']))
            say({'id': req.get('id'), 'ok': True, 'data': base64.b64encode(data).decode('ascii')})
            continue
        elif op == 'omap_set':
            with rados.WriteOpCtx() as w:
                io.set_omap(w, (req['key'],), (req['val'].encode('utf-8'),))
                io.operate_write_op(w, req['obj'])
        elif op == 'omap_rm':
            with rados.WriteOpCtx() as w:
                io.remove_omap_keys(w, (req['key'],))
                io.operate_write_op(w, req['obj'])
        elif op == 'remove':
            image_op(req, purge)
            rbd.RBD().remove(io, req['image'])
        else: raise ValueError('unknown request ' + str(op))
        say({'id': req.get('id'), 'ok': True})
    except Exception as e:
        say(dict({'id': req.get('id'), 'ok': False}, **errinfo(e)))
stop.set()
try:
    if clean:
        rm_keys([k for k in omap() if k.startswith(mine)])
    io.unlock(obj, name, cookie)
except Exception:
    pass
io.close(); c.shutdown()
`
