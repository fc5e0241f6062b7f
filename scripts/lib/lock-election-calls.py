"""The same Lock and Election calls, valid and not, to one server (argv[1], host:port), with
stubs generated into argv[2]; prints each answer or error (code and message) and the header's
revision, so two servers' outputs can be diffed. Run by scripts/lock-election-vs-etcd.sh."""
import sys, grpc
sys.path.insert(0, sys.argv[2])
from etcd.api.etcdserverpb import rpc_pb2 as rpc, rpc_pb2_grpc as rpcg
from etcd.api.v3lockpb import v3lock_pb2 as lk, v3lock_pb2_grpc as lkg
from etcd.api.v3electionpb import v3election_pb2 as el, v3election_pb2_grpc as elg

ch = grpc.insecure_channel(sys.argv[1])
lease = rpcg.LeaseStub(ch); lock = lkg.LockStub(ch); elect = elg.ElectionStub(ch)
def call(what, f, *a):
    try:
        r = f(*a, timeout=5)
        print(what, 'OK', (str(r.kv) if what == 'leader' else str(getattr(r, 'key', ''))).replace('\n', ' ') if what in ('lock','leader') else '', 'rev', r.header.revision if r.HasField('header') else None)
        return r
    except grpc.RpcError as e:
        print(what, 'ERR', e.code(), repr(e.details()))
call('leader-none', elect.Leader, el.LeaderRequest(name=b'py-e'))
call('grant', lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=30, ID=0x1234))
r = call('lock', lock.Lock, lk.LockRequest(name=b'py-l', lease=0x1234))
call('unlock', lock.Unlock, lk.UnlockRequest(key=r.key))
c = call('campaign', elect.Campaign, el.CampaignRequest(name=b'py-e', lease=0x1234, value=b'a'))
lkey = c.leader
print('campaign-leaderkey', lkey.name, lkey.key, lkey.lease, 'rev==header', lkey.rev == c.header.revision)
call('proclaim', elect.Proclaim, el.ProclaimRequest(leader=lkey, value=b'b'))
r = call('leader', elect.Leader, el.LeaderRequest(name=b'py-e'))
stale = el.LeaderKey(name=lkey.name, key=lkey.key, rev=lkey.rev - 1, lease=lkey.lease)
call('proclaim-stale', elect.Proclaim, el.ProclaimRequest(leader=stale, value=b'x'))
call('proclaim-missing', elect.Proclaim, el.ProclaimRequest(value=b'x'))
call('resign-missing', elect.Resign, el.ResignRequest())
call('resign', elect.Resign, el.ResignRequest(leader=lkey))
call('resign-again', elect.Resign, el.ResignRequest(leader=lkey))
call('leader-after', elect.Leader, el.LeaderRequest(name=b'py-e'))
call('lock-unknown-lease', lock.Lock, lk.LockRequest(name=b'py-l', lease=0x9999))
call('unlock-missing', lock.Unlock, lk.UnlockRequest(key=b'py-l/nothing'))
call('unlock-empty', lock.Unlock, lk.UnlockRequest(key=b''))
