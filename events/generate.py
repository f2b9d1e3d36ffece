#!/usr/bin/env python3
"""Regenerate the API Gateway v2 (HTTP API) event fixtures in events/<function>/.

Each function gets `valid*.json` (answered 2xx) and `invalid-*.json` (answered 4xx,
changing nothing). They are used by the tests and by
`cargo lambda invoke <function> --data-file events/<function>/valid.json`.

The fixtures name the VM `lablink-vm-test-1`, whose credential is FIXTURE_VM_TOKEN, and
carry an admin session cookie signed with FIXTURE_SESSION_KEY that expires in 2100.
Those values are for tests only; a deployment has its own random ones.
"""
import base64, hashlib, hmac, json, os, urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "lablink-vm-test-1"
FIXTURE_VM_TOKEN = "fixture-credential-of-lablink-vm-test-1-not-a-secret"
OTHER_VM_TOKEN = "fixture-credential-of-lablink-vm-test-2-not-a-secret"
FIXTURE_SESSION_KEY = "ab" * 32
CODE = "4/0AanRJrjkgQxYzFixtureCode_-123"
OPEN_EXPORT = "20261123T110000Z-0e0e0e01"
DONE_EXPORT = "20261123T100000Z-0d0d0d02"
PASTED = ('DISPLAY= /opt/google/chrome-remote-desktop/start-host --code="%s" '
          '--redirect-url="https://remotedesktop.google.com/_/oauthredirect" --name=$(hostname)' % CODE)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


FIXTURE_SESSION_ID = "f1" * 32
# A second session of the admin, which the logout fixture ends (so the others stay live).
FIXTURE_LOGOUT_SESSION_ID = "f2" * 32


def admin_cookie(session_id=FIXTURE_SESSION_ID):
    # The sessions' server-side records are seeded by lablink_testkit::fixtures::seed_admin_session.
    payload = "v2.%s.%d.%s" % (b64(b"admin"), 4102444800, session_id)  # 2100-01-01
    sig = hmac.new(bytes.fromhex(FIXTURE_SESSION_KEY), payload.encode(), hashlib.sha256).digest()
    return "lablink_session=%s.%s" % (payload, b64(sig))


def event(method, path, route, body=None, headers=None, query="", path_params=None, cookies=None):
    h = {"host": "abc123.execute-api.us-east-1.amazonaws.com", "user-agent": "fixture"}
    h.update(headers or {})
    ev = {
        "version": "2.0",
        "routeKey": "%s %s" % (method, route),
        "rawPath": path,
        "rawQueryString": query,
        "headers": h,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "fixture"},
            "requestId": "fixture-request",
            "routeKey": "%s %s" % (method, route),
            "stage": "$default",
            "time": "23/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795428000000,
        },
        "isBase64Encoded": False,
    }
    if query:
        ev["queryStringParameters"] = dict(urllib.parse.parse_qsl(query))
    if path_params:
        ev["pathParameters"] = path_params
    if cookies:
        ev["cookies"] = cookies
    if body is not None:
        ev["body"] = body
    return ev


SEAT_TOKEN = "5ea7" * 16  # 64 hex digits
OTHER_HOST = "lablink-vm-test-2"
PASTED_FRESH = PASTED.replace(CODE, CODE + "Fresh")
FIXTURE_ADMIN_PASSWORD = "fixture-admin-password"
FIXTURE_JOB = "20261123T100000Z-0f1c7a2e"
FIXTURE_INSTANCE = "i-0fixture00000001"
FIXTURE_ENROLL_SECRET = "fixture-enrollment-secret-of-job-0f1c7a2e"
DEPLOYMENT = "test"


def csrf(session_id=FIXTURE_SESSION_ID):
    value = admin_cookie(session_id).split("=", 1)[1]
    return b64(hmac.new(bytes.fromhex(FIXTURE_SESSION_KEY), ("csrf." + value).encode(), hashlib.sha256).digest())


def admin_form(fields):
    return urllib.parse.urlencode(fields)


def vm(token=FIXTURE_VM_TOKEN):
    return {"authorization": "Bearer " + token, "content-type": "application/json"}


FORM = {"content-type": "application/x-www-form-urlencoded"}
ADMIN = [admin_cookie()]


def fixtures():
    j = json.dumps
    hp = {"hostname": HOST}
    yield "index", "valid", event("GET", "/", "/")
    yield "index", "invalid-method", event("POST", "/", "/", body="")
    yield "request-vm", "valid", event("POST", "/api/request_vm", "/api/request_vm", headers=FORM,
        body=urllib.parse.urlencode({"email": "ada@uni.edu", "crd_command": PASTED}))
    yield "request-vm", "invalid-injection", event("POST", "/api/request_vm", "/api/request_vm", headers=FORM,
        body=urllib.parse.urlencode({"email": "eve@uni.edu", "crd_command": PASTED + "; rm -rf /"}))
    yield "request-vm", "invalid-email", event("POST", "/api/request_vm", "/api/request_vm", headers=FORM,
        body=urllib.parse.urlencode({"email": "not-an-email", "crd_command": PASTED}))
    yield "request-vm", "invalid-too-large", event("POST", "/api/request_vm", "/api/request_vm", headers=FORM,
        body="email=a%40b.org&crd_command=" + "x" * 20000)
    yield "unassigned-vms-count", "valid", event("GET", "/api/unassigned_vms_count", "/api/unassigned_vms_count")
    yield "unassigned-vms-count", "invalid-method", event("DELETE", "/api/unassigned_vms_count", "/api/unassigned_vms_count")
    yield "update-inuse-status", "valid", event("POST", "/api/update_inuse_status", "/api/update_inuse_status",
        headers=vm(), body=j({"hostname": HOST, "status": True}))
    yield "update-inuse-status", "invalid-json", event("POST", "/api/update_inuse_status", "/api/update_inuse_status",
        headers=vm(), body='{"hostname": "%s", "status": ' % HOST)
    yield "update-inuse-status", "invalid-no-credential", event("POST", "/api/update_inuse_status",
        "/api/update_inuse_status", headers={"content-type": "application/json"}, body=j({"hostname": HOST, "status": True}))
    yield "update-inuse-status", "invalid-other-vm", event("POST", "/api/update_inuse_status", "/api/update_inuse_status",
        headers=vm(OTHER_VM_TOKEN), body=j({"hostname": HOST, "status": True}))
    yield "gpu-health", "valid", event("POST", "/api/gpu_health", "/api/gpu_health",
        headers=vm(), body=j({"hostname": HOST, "gpu_status": "N/A"}))
    yield "gpu-health", "invalid-value", event("POST", "/api/gpu_health", "/api/gpu_health",
        headers=vm(), body=j({"hostname": HOST, "gpu_status": 42}))
    yield "post-vm-status", "valid", event("POST", "/api/vm-status", "/api/vm-status",
        headers=vm(), body=j({"hostname": HOST, "status": "running"}))
    yield "post-vm-status", "invalid-status", event("POST", "/api/vm-status", "/api/vm-status",
        headers=vm(), body=j({"hostname": HOST, "status": "exploding"}))
    yield "post-vm-status", "invalid-unknown-vm", event("POST", "/api/vm-status", "/api/vm-status",
        headers=vm(), body=j({"hostname": "lablink-vm-nope", "status": "running"}))
    yield "list-vm-status", "valid", event("GET", "/api/vm-status", "/api/vm-status", cookies=ADMIN)
    yield "list-vm-status", "invalid-no-session", event("GET", "/api/vm-status", "/api/vm-status")
    yield "get-vm-status", "valid", event("GET", "/api/vm-status/" + HOST, "/api/vm-status/{hostname}",
        headers=vm(), path_params=hp)
    yield "get-vm-status", "invalid-hostname", event("GET", "/api/vm-status/bad_name", "/api/vm-status/{hostname}",
        headers=vm(), path_params={"hostname": "bad_name"})
    yield "post-vm-logs", "valid", event("POST", "/api/vm-logs", "/api/vm-logs", headers=vm(),
        body=j({"log_group": "lablink-cloud-init-test", "log_stream": HOST,
                "messages": ["Cloud-init v. 24.1 running", "Docker container started"],
                "event_ids": ["fixture-1", "fixture-2"]}))
    yield "post-vm-logs", "invalid-shape", event("POST", "/api/vm-logs", "/api/vm-logs", headers=vm(),
        body=j({"log_group": "lablink-cloud-init-test", "log_stream": HOST, "messages": "not a list"}))
    yield "get-vm-logs", "valid", event("GET", "/api/vm-logs/" + HOST, "/api/vm-logs/{hostname}",
        path_params=hp, query="after=0&limit=100", cookies=ADMIN)
    yield "get-vm-logs", "invalid-limit", event("GET", "/api/vm-logs/" + HOST, "/api/vm-logs/{hostname}",
        path_params=hp, query="limit=-5", cookies=ADMIN)
    yield "post-vm-metrics", "valid", event("POST", "/api/vm-metrics/" + HOST, "/api/vm-metrics/{hostname}",
        headers=vm(), path_params=hp, body=j({
            "cloud_init_start": "2025-11-13T10:00:00Z", "cloud_init_end": "2025-11-13T10:05:30Z",
            "container_start": "2025-11-13T10:03:00Z", "container_ready": "2025-11-13T10:05:30Z"}))
    yield "post-vm-metrics", "invalid-order", event("POST", "/api/vm-metrics/" + HOST, "/api/vm-metrics/{hostname}",
        headers=vm(), path_params=hp, body=j({
            "cloud_init_start": "2025-11-13T10:05:00Z", "cloud_init_end": "2025-11-13T10:00:00Z"}))
    yield "health", "valid", event("GET", "/api/health", "/api/health")
    yield "health", "invalid-method", event("POST", "/api/health", "/api/health", body="{}")

    # Enrollment: the fixture database holds FIXTURE_INSTANCE, launched by FIXTURE_JOB.
    enroll = lambda secret: event("POST", "/api/enroll", "/api/enroll", headers={"content-type": "application/json"},
        body=j({"instance_id": FIXTURE_INSTANCE, "enrollment_secret": secret}))
    yield "enroll", "valid", enroll(FIXTURE_ENROLL_SECRET)
    yield "enroll", "invalid-secret", enroll("not-the-job-secret")

    # Admin pages (GET, session cookie) and their refusals.
    for function, path, route in [("admin-home", "/admin", "/admin"),
                                  ("admin-create", "/admin/create", "/admin/create"),
                                  ("admin-instances", "/admin/instances", "/admin/instances"),
                                  ("admin-delete", "/admin/instances/delete", "/admin/instances/delete")]:
        yield function, "valid", event("GET", path, route, cookies=ADMIN)
        yield function, "invalid-method", event("POST", path, route, cookies=ADMIN, headers=FORM, body="")
    yield "admin-logs", "valid", event("GET", "/admin/logs/" + HOST, "/admin/logs/{hostname}",
        path_params=hp, cookies=ADMIN)
    yield "admin-logs", "invalid-hostname", event("GET", "/admin/logs/bad_name", "/admin/logs/{hostname}",
        path_params={"hostname": "bad_name"}, cookies=ADMIN)
    yield "admin-job", "valid", event("GET", "/admin/jobs/" + FIXTURE_JOB, "/admin/jobs/{id}",
        path_params={"id": FIXTURE_JOB}, cookies=ADMIN)
    yield "admin-job", "invalid-id", event("GET", "/admin/jobs/..%2Fetc", "/admin/jobs/{id}",
        path_params={"id": "../etc"}, cookies=ADMIN)
    yield "get-job", "valid", event("GET", "/api/jobs/" + FIXTURE_JOB, "/api/jobs/{id}",
        path_params={"id": FIXTURE_JOB}, cookies=ADMIN)
    yield "get-job", "invalid-no-session", event("GET", "/api/jobs/" + FIXTURE_JOB, "/api/jobs/{id}",
        path_params={"id": FIXTURE_JOB})

    # Login: the form's token must match its cookie.
    yield "admin-login-page", "valid", event("GET", "/admin/login", "/admin/login")
    yield "admin-login-page", "invalid-method", event("PUT", "/admin/login", "/admin/login", body="")
    login_token = "fixture-login-form-token"
    yield "admin-login", "valid", event("POST", "/admin/login", "/admin/login", headers=FORM,
        cookies=["lablink_login_csrf=" + login_token],
        body=admin_form({"user": "admin", "password": FIXTURE_ADMIN_PASSWORD, "csrf": login_token, "next": "/admin"}))
    yield "admin-login", "invalid-csrf", event("POST", "/admin/login", "/admin/login", headers=FORM,
        cookies=["lablink_login_csrf=" + login_token],
        body=admin_form({"user": "admin", "password": FIXTURE_ADMIN_PASSWORD, "csrf": "forged"}))
    yield "admin-logout", "valid", event("POST", "/admin/logout", "/admin/logout", headers=FORM,
        cookies=[admin_cookie(FIXTURE_LOGOUT_SESSION_ID)], body=admin_form({"csrf": csrf(FIXTURE_LOGOUT_SESSION_ID)}))
    yield "admin-logout", "invalid-no-csrf", event("POST", "/admin/logout", "/admin/logout", headers=FORM,
        cookies=ADMIN, body="")

    # Jobs: forms with the session's CSRF token and an idempotency key.
    yield "launch", "valid", event("POST", "/api/launch", "/api/launch", headers=FORM, cookies=ADMIN,
        body=admin_form({"num_vms": "2", "csrf": csrf(), "job_id": "20261123T100500Z-1a2b3c4d"}))
    yield "launch", "invalid-count", event("POST", "/api/launch", "/api/launch", headers=FORM, cookies=ADMIN,
        body=admin_form({"num_vms": "0", "csrf": csrf(), "job_id": "20261123T100501Z-1a2b3c4d"}))
    yield "launch", "invalid-no-csrf", event("POST", "/api/launch", "/api/launch", headers=FORM, cookies=ADMIN,
        body=admin_form({"num_vms": "1"}))
    yield "launch", "invalid-cross-site", event("POST", "/api/launch", "/api/launch", cookies=ADMIN,
        headers=dict(FORM, origin="https://evil.example"),
        body=admin_form({"num_vms": "1", "csrf": csrf()}))
    yield "destroy", "valid", event("POST", "/destroy", "/destroy", headers=FORM, cookies=ADMIN,
        body=admin_form({"confirm": DEPLOYMENT, "csrf": csrf(), "job_id": "20261123T100600Z-5e6f7a8b"}))
    yield "destroy", "invalid-confirmation", event("POST", "/destroy", "/destroy", headers=FORM, cookies=ADMIN,
        body=admin_form({"confirm": "yes", "csrf": csrf()}))
    yield "set-aws-credentials", "valid", event("POST", "/api/admin/set-aws-credentials",
        "/api/admin/set-aws-credentials", headers=FORM, cookies=ADMIN,
        body=admin_form({"aws_access_key_id": "AKIAFIXTURE000000001", "aws_secret_access_key": "fixture/secret/key/not+real/000000000",
                         "csrf": csrf()}))
    yield "set-aws-credentials", "invalid-missing-key", event("POST", "/api/admin/set-aws-credentials",
        "/api/admin/set-aws-credentials", headers=FORM, cookies=ADMIN,
        body=admin_form({"aws_access_key_id": "", "csrf": csrf()}))
    yield "unset-aws-credentials", "valid", event("POST", "/api/admin/unset-aws-credentials",
        "/api/admin/unset-aws-credentials", headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf()}))
    yield "unset-aws-credentials", "invalid-no-csrf", event("POST", "/api/admin/unset-aws-credentials",
        "/api/admin/unset-aws-credentials", headers=FORM, cookies=ADMIN, body="")

    # Data export: the fixture database has export OPEN_EXPORT asking HOST; DONE_EXPORT
    # is finished with a zip.
    yield "scp-client", "valid", event("GET", "/api/scp-client", "/api/scp-client", cookies=ADMIN)
    yield "scp-client", "invalid-no-session", event("GET", "/api/scp-client", "/api/scp-client")
    yield "vm-export", "valid", event("POST", "/api/vm-export/" + HOST, "/api/vm-export/{hostname}",
        path_params=hp, headers=vm(), body=j({"job_id": OPEN_EXPORT, "state": "uploading"}))
    yield "vm-export", "invalid-state", event("POST", "/api/vm-export/" + HOST, "/api/vm-export/{hostname}",
        path_params=hp, headers=vm(), body=j({"job_id": OPEN_EXPORT, "state": "finished-maybe"}))
    yield "export-download", "valid", event("GET", "/api/exports/%s/download" % DONE_EXPORT,
        "/api/exports/{id}/download", path_params={"id": DONE_EXPORT}, cookies=ADMIN)
    yield "export-download", "invalid-id", event("GET", "/api/exports/..%2F/download",
        "/api/exports/{id}/download", path_params={"id": "../"}, cookies=ADMIN)

    # Seats: the fixture database has SEAT_HOST assigned to SEAT_EMAIL, whose status
    # page token is SEAT_TOKEN (shared/testkit/src/fixtures.rs seeds it).
    tp = {"token": SEAT_TOKEN}
    yield "seat-page", "valid", event("GET", "/seat/" + SEAT_TOKEN, "/seat/{token}", path_params=tp)
    yield "seat-page", "invalid-unknown-token", event("GET", "/seat/" + "0" * 64, "/seat/{token}",
        path_params={"token": "0" * 64})
    yield "seat-page", "invalid-malformed-token", event("GET", "/seat/..%2Fadmin", "/seat/{token}",
        path_params={"token": "../admin"})
    yield "seat-status", "valid", event("GET", "/api/seat/" + SEAT_TOKEN, "/api/seat/{token}", path_params=tp)
    yield "seat-status", "invalid-unknown-token", event("GET", "/api/seat/" + "f" * 64, "/api/seat/{token}",
        path_params={"token": "f" * 64})
    yield "seat-code", "valid", event("POST", "/api/seat/%s/code" % SEAT_TOKEN, "/api/seat/{token}/code",
        path_params=tp, headers=FORM, body=urllib.parse.urlencode({"crd_command": PASTED_FRESH}))
    yield "seat-code", "invalid-injection", event("POST", "/api/seat/%s/code" % SEAT_TOKEN, "/api/seat/{token}/code",
        path_params=tp, headers=FORM, body=urllib.parse.urlencode({"crd_command": PASTED_FRESH + "; rm -rf /"}))
    yield "seat-code", "invalid-unknown-token", event("POST", "/api/seat/%s/code" % ("0" * 64), "/api/seat/{token}/code",
        path_params={"token": "0" * 64}, headers=FORM, body=urllib.parse.urlencode({"crd_command": PASTED_FRESH}))

    # The admin's per-VM actions, on the second fixture VM.
    def act(action):
        return "/api/admin/vms/%s/%s" % (OTHER_HOST, action), {"hostname": OTHER_HOST, "action": action}
    path, pp = act("release")
    yield "admin-vm-action", "valid", event("POST", path, "/api/admin/vms/{hostname}/{action}", path_params=pp,
        headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "keep_files": "on"}))
    yield "admin-vm-action", "invalid-no-csrf", event("POST", path, "/api/admin/vms/{hostname}/{action}",
        path_params=pp, headers=FORM, cookies=ADMIN, body=admin_form({"keep_files": "on"}))
    path, pp = act("explode")
    yield "admin-vm-action", "invalid-action", event("POST", path, "/api/admin/vms/{hostname}/{action}",
        path_params=pp, headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf()}))
    path, pp = act("reassign")
    yield "admin-vm-action", "invalid-email", event("POST", path, "/api/admin/vms/{hostname}/{action}",
        path_params=pp, headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "email": "not an email"}))

    # Who may take a seat.
    yield "admin-workshop", "valid", event("POST", "/api/admin/workshop", "/api/admin/workshop", headers=FORM,
        cookies=ADMIN, body=admin_form({"csrf": csrf(), "access_code": "", "participants": "",
                                        "seats_per_address": "100", "window_minutes": "10", "action": "save"}))
    yield "admin-workshop", "invalid-participants", event("POST", "/api/admin/workshop", "/api/admin/workshop",
        headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "participants": "ada@uni.edu, broken@@uni"}))
    yield "admin-workshop", "invalid-limit", event("POST", "/api/admin/workshop", "/api/admin/workshop",
        headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "seats_per_address": "0"}))
    yield "admin-fleet-end", "valid", event("POST", "/api/admin/fleet-end", "/api/admin/fleet-end", headers=FORM,
        cookies=ADMIN, body=admin_form({"csrf": csrf(), "ends_in_hours": "6"}))
    yield "admin-fleet-end", "invalid-hours", event("POST", "/api/admin/fleet-end", "/api/admin/fleet-end",
        headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "ends_in_hours": "500"}))
    yield "admin-fleet-end", "invalid-past", event("POST", "/api/admin/fleet-end", "/api/admin/fleet-end",
        headers=FORM, cookies=ADMIN, body=admin_form({"csrf": csrf(), "ends_at": "2020-01-01T00:00:00Z"}))
    yield "admin-workshop", "invalid-no-csrf", event("POST", "/api/admin/workshop", "/api/admin/workshop",
        headers=FORM, cookies=ADMIN, body=admin_form({"access_code": "open-sesame"}))


def stream_record(event_name, job_id, state):
    """A DynamoDB stream record of a job item, as the provisioner receives it."""
    keys = {"pk": {"S": "job"}, "sk": {"S": job_id}}
    image = dict(keys, state={"S": state}, ver={"N": "1"}, body={"S": "{}"})
    return {
        "eventID": "fixture-" + event_name.lower(),
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {"ApproximateCreationDateTime": 1795428000, "Keys": keys, "NewImage": image,
                     "SequenceNumber": "100000000000000000001", "SizeBytes": 120, "StreamViewType": "NEW_IMAGE"},
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/lablink-jobs/stream/2026-11-23T10:00:00.000",
    }


def provisioner_fixtures():
    # The fixture job is finished: the provisioner reads it and does nothing.
    yield "provisioner", "valid", {"Records": [stream_record("INSERT", FIXTURE_JOB, "succeeded"),
                                               stream_record("MODIFY", FIXTURE_JOB, "succeeded")]}
    # Items that are not jobs (the fleet lock, settings) are ignored.
    yield "provisioner", "valid-not-a-job", {"Records": [dict(stream_record("INSERT", FIXTURE_JOB, "queued"),
        dynamodb={"Keys": {"pk": {"S": "lock"}, "sk": {"S": "fleet"}}})]}


def main():
    for function, name, ev in list(fixtures()) + list(provisioner_fixtures()):
        d = os.path.join(HERE, function)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name + ".json"), "w") as f:
            json.dump(ev, f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
