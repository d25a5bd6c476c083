/**
 * The Python of the librbd helper (rbd-image.ts, where its framing is
 * described). Arguments: conf, client id, keyring, pool, image, snapshot
 * ('' for the head), the largest request, mode (`read`, `side`, `write`),
 * the log or side object, the capacity, and the lock object and key under
 * which a writer registers its client address before it writes
 * (ceph-lock.ts: fencing; '' for none).
 */
/** Python: connect to the cluster as the store's client and open the pool (both helpers). */
export const PY_CONNECT = `
def connect(conf, cid, keyring, pool):
    kw = {}
    if keyring: kw['conf'] = {'keyring': keyring}
    c = rados.Rados(conffile=conf or '', rados_id=(cid or None), **kw)
    c.connect(timeout=20)
    return c, c.open_ioctx(pool)
`

export const IMAGE_HELPER = `
import sys, struct, rados, rbd
${PY_CONNECT}
conf, cid, keyring, pool, image, snap, maxlen, mode, log, capacity, fence_obj, fence_key = sys.argv[1:13]
maxlen = int(maxlen)
writing = mode == 'write'
side = mode == 'side'
out = sys.stdout.buffer
inp = sys.stdin.buffer
def frame(status, data):
    out.write(struct.pack('<BI', status, len(data)))
    out.write(data)
    out.flush()
try:
    c, io = connect(conf, cid, keyring, pool)
    if fence_obj:
        # registered for the lease before any write (ceph-lock.ts): a later taker of the lease fences this client
        with rados.WriteOpCtx() as op:
            io.set_omap(op, (fence_key + '.' + str(c.get_instance_id()),), (c.get_addrs().encode(),))
            io.operate_write_op(op, fence_obj)
    if writing:
        img = rbd.Image(io, image)
        if snap and snap not in [x['name'] for x in img.list_snaps()]:
            raise Exception('the base snapshot %s of image %s is missing' % (snap, image))
    else:
        img = rbd.Image(io, image, snapshot=(snap or None), read_only=True)
    size = img.size()
    sid = 0
    if snap and not writing:
        sid = next((x['id'] for x in img.list_snaps() if x['name'] == snap), 0)
except Exception as e:
    frame(1, (type(e).__name__ + ': ' + str(e)).encode('utf-8', 'replace'))
    sys.exit(2)
frame(0, struct.pack('<QQ', size, sid))
while True:
    h = inp.read(13)
    if h is None or len(h) < 13:
        break
    op, off, ln = struct.unpack('<BQI', h)
    body = b''
    if op in (2, 4, 6, 7):
        if ln > maxlen:
            frame(1, ('a request of %d bytes, at most %d' % (ln, maxlen)).encode())
            break
        body = inp.read(ln) if ln > 0 else b''
        if body is None or len(body) < ln:
            break
    bad = op not in (1, 2, 3, 4, 5, 6, 7) or (op in (2, 3, 4) and not writing) or (op in (5, 6, 7) and not log) or (op in (6, 7) and not side) or (op in (1, 5) and ln > maxlen) or (op in (1, 2, 3) and off + ln > size)
    if bad:
        frame(1, ('bad request op %d offset %d length %d (size %d, at most %d per read)' % (op, off, ln, size, maxlen)).encode())
        continue
    try:
        if op == 1:
            data = img.read(off, ln) if ln > 0 else b''
            if len(data) < ln:
                data = data + bytes(ln - len(data))
            frame(0, data)
        elif op == 2:
            img.write(body, off)
            frame(0, b'')
        elif op == 3:
            img.write_zeroes(off, ln)
            frame(0, b'')
        elif op == 5:
            try:
                frame(0, io.read(log, ln, off) if ln > 0 else b'')
            except rados.ObjectNotFound:
                frame(2, b'')
        elif op == 6:
            io.write(log, body, off)
            frame(0, b'')
        elif op == 7:
            io.write_full(log, body)
            frame(0, b'')
        else:
            img.flush()
            if ln > 0:
                io.append(log, body)
            frame(0, b'')
    except Exception as e:
        # ENOSPC, EDQUOT: a full pool (its quota, or the cluster's full ratio); EBLOCKLISTED: fenced
        en = getattr(e, 'errno', None)
        frame(3 if en in (28, 122) else 4 if en == 108 else 1, (type(e).__name__ + ': ' + str(e)).encode('utf-8', 'replace'))
img.close(); io.close(); c.shutdown()
`
