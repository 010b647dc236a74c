"""A real gRPC server and client (grpcio) for the proxy's gRPC tests (tests/grpc.rs).

Messages are raw bytes (no protobuf schema, so no protoc): the generic handlers below pass
them through as they are.

    peer.py server [--tls CERT KEY]
        Serves test.Echo on 127.0.0.1:0 and prints "port N". Reads commands on stdin:
        "release NAME" opens a gate that Held* calls wait at, "stats" prints one JSON line of
        calls per method and cancellations seen.
    peer.py client TARGET SCENARIO [ARG] [--tls CA]
        Runs one scenario against TARGET and prints its result as one JSON line.
"""

import base64
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"
calls = {}
cancelled = {}
lock = threading.Lock()
gates = {}


def gate(name):
    with lock:
        return gates.setdefault(name, threading.Event())


def count(method):
    with lock:
        calls[method] = calls.get(method, 0) + 1


def get(request, context):
    count("Get")
    context.set_trailing_metadata((("x-trail", "t-" + request.decode()), ("x-trail-bin", b"\x00\x01\xff")))
    return b"got:" + request


def held(request, context):
    count("Held")
    gate("held").wait(20)
    context.set_trailing_metadata((("x-trail", "held-" + request.decode()),))
    return b"held:" + request


def fail(request, context):
    count("Fail")
    context.set_trailing_metadata((("x-detail", "none here"), ("x-detail-bin", b"\xde\xad\xbe\xef")))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())


def held_fail(request, context):
    count("HeldFail")
    gate("fail").wait(20)
    context.abort(grpc.StatusCode.UNAVAILABLE, "try again")


def held_list_fail(request, context):
    count("HeldListFail")
    gate("late").wait(20)
    yield b"first"
    context.abort(grpc.StatusCode.UNAVAILABLE, "gone mid-stream")


def listing(request, context):
    count("List")
    for i in range(100):
        yield b"item-%d" % i
    context.set_trailing_metadata((("x-listed", "100"),))


def total(requests, context):
    count("Sum")
    parts = [r for r in requests]
    return b"+".join(parts)


def chat(requests, context):
    count("Chat")
    for r in requests:
        yield b"re:" + r


def slow(request, context):
    count("Slow")
    print("started Slow", flush=True)
    seen = threading.Event()

    def gone():
        if not seen.is_set():
            seen.set()
            with lock:
                cancelled["Slow"] = cancelled.get("Slow", 0) + 1
            print("cancelled Slow", flush=True)

    context.add_callback(gone)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and context.is_active():
        time.sleep(0.01)
    return b"late"


def serve(tls):
    handlers = {
        "Get": grpc.unary_unary_rpc_method_handler(get),
        "Held": grpc.unary_unary_rpc_method_handler(held),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "HeldFail": grpc.unary_unary_rpc_method_handler(held_fail),
        "HeldListFail": grpc.unary_stream_rpc_method_handler(held_list_fail),
        "List": grpc.unary_stream_rpc_method_handler(listing),
        "Sum": grpc.stream_unary_rpc_method_handler(total),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if tls:
        cert, key = (open(p, "rb").read() for p in tls)
        credentials = grpc.ssl_server_credentials(((key, cert),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command.startswith("release "):
            gate(command.split()[1]).set()
            print("released", flush=True)
        elif command == "stats":
            with lock:
                print(json.dumps({"calls": calls, "cancelled": cancelled}), flush=True)
    server.stop(0)


def metadata(pairs):
    out = []
    for key, value in pairs or ():
        if isinstance(value, bytes):
            value = "b64:" + base64.b64encode(value).decode()
        out.append([key, value])
    return out


def outcome(call_or_error):
    """Code, details and trailing metadata of a finished call or an RpcError."""
    return {
        "code": call_or_error.code().name,
        "details": call_or_error.details(),
        "trailing": metadata(call_or_error.trailing_metadata()),
    }


def unary(channel, method, payload, timeout=10):
    stub = channel.unary_unary(f"/{SERVICE}/{method}")
    try:
        response, call = stub.with_call(payload, timeout=timeout)
        return {"response": response.decode(), **outcome(call)}
    except grpc.RpcError as err:
        return {"response": None, **outcome(err)}


def herd(channel, method, n, same, streaming=False):
    if streaming:
        stub = channel.unary_stream(f"/{SERVICE}/{method}")
    else:
        stub = channel.unary_unary(f"/{SERVICE}/{method}")
    payloads = [b"same" if same else b"msg-%d" % i for i in range(n)]
    if streaming:
        calls = [stub(p, timeout=20) for p in payloads]
    else:
        calls = [stub.future(p, timeout=20) for p in payloads]
    print(json.dumps({"started": n}), flush=True)
    results = []
    for call in calls:
        try:
            if streaming:
                response = ",".join(m.decode() for m in call)
            else:
                response = call.result().decode()
            results.append({"response": response, **outcome(call)})
        except grpc.RpcError as err:
            results.append({"response": None, **outcome(err)})
    return {"results": results}


def run(channel, scenario, arg):
    if scenario == "unary":
        return unary(channel, "Get", (arg or "hello").encode())
    if scenario == "error":
        return unary(channel, "Fail", b"thing-7")
    if scenario == "stream":
        stub = channel.unary_stream(f"/{SERVICE}/List")
        call = stub(b"", timeout=10)
        try:
            messages = [m.decode() for m in call]
        except grpc.RpcError:
            messages = None
        return {"messages": messages, **outcome(call)}
    if scenario == "client_stream":
        stub = channel.stream_unary(f"/{SERVICE}/Sum")
        try:
            response, call = stub.with_call(iter([b"a", b"bb", b"ccc"] * 10), timeout=10)
            return {"response": response.decode(), **outcome(call)}
        except grpc.RpcError as err:
            return {"response": None, **outcome(err)}
    if scenario == "bidi":
        stub = channel.stream_stream(f"/{SERVICE}/Chat")
        call = stub(iter([b"x%d" % i for i in range(20)]), timeout=10)
        try:
            messages = [m.decode() for m in call]
        except grpc.RpcError:
            messages = None
        return {"messages": messages, **outcome(call)}
    if scenario == "deadline":
        started = time.monotonic()
        result = unary(channel, "Slow", b"", timeout=1)
        result["elapsed"] = round(time.monotonic() - started, 3)
        return result
    if scenario == "cancel":
        # Cancels a Slow call (no deadline) when a line arrives on stdin: the test sends it
        # once the server has the call.
        stub = channel.unary_unary(f"/{SERVICE}/Slow")
        call = stub.future(b"", timeout=30)
        sys.stdin.readline()
        call.cancel()
        return {"cancelled": call.cancelled()}
    if scenario in ("herd_same", "herd_different"):
        return herd(channel, "Held", int(arg), scenario == "herd_same")
    if scenario == "herd_failing":
        return herd(channel, "HeldFail", int(arg), True)
    if scenario == "herd_failing_late":
        return herd(channel, "HeldListFail", int(arg), True, streaming=True)
    raise SystemExit(f"unknown scenario {scenario}")


def client(target, scenario, arg, tls):
    options = [("grpc.enable_retries", 0)]
    if tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=open(tls, "rb").read())
        options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        print(json.dumps(run(channel, scenario, arg)), flush=True)


def main(argv):
    tls = None
    if "--tls" in argv:
        at = argv.index("--tls")
        tls = argv[at + 1 :]
        argv = argv[:at]
    if argv[1] == "server":
        serve(tls)
    else:
        client(argv[2], argv[3], argv[4] if len(argv) > 4 else None, tls[0] if tls else None)


if __name__ == "__main__":
    main(sys.argv)
