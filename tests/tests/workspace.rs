//! The participant's workspace, end to end against a real Docker engine: Postgres, the
//! routes on HTTP, the holder, and client-daemon binaries that each run a workspace
//! container from CI's build of the client image recipe (`client-image/`, on a Debian
//! base, with Chrome Remote Desktop replaced by the CRD 148 stand-ins of
//! `tests/crd-standin`, which abort without the runtime directory, start no host from
//! start-host, and run a host only as `--start --new-session`; `sleap-label` and a
//! set-uid program from `tests/client-image`). The tutorial repository is served by a
//! local `git daemon`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lablink_core::domain::VmStatus;
use lablink_db::vms;
use lablink_e2e::{ApiServer, HolderProc, Proc, TestVm, create_vms, docker, eventually, workspace_bin};
use lablink_testkit::TestDb;
use tokio::process::Command;

/// Removes the test's containers and volumes, whatever happens.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for host in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force", &format!("lablink-workspace-{host}")])
                .output();
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "--force", &format!("lablink-home-{host}")])
                .output();
        }
    }
}

/// Hostnames no earlier run left a container for.
fn prefix(what: &str) -> String {
    format!("ws{what}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn container(host: &str) -> String {
    format!("lablink-workspace-{host}")
}

/// cloud-init's status record as cloud-init lays it out (`/var/lib/cloud/data/status.json`).
fn cloud_init_fixture(dir: &Path) -> PathBuf {
    let p = dir.join("cloud-init-status.json");
    std::fs::write(
        &p,
        r#"{"v1":{"datasource":"DataSourceEc2Local","stage":null,
          "init-local":{"errors":[],"start":1763028000.0,"finished":1763028003.0},
          "init":{"errors":[],"start":1763028004.0,"finished":1763028010.0},
          "modules-config":{"errors":[],"start":1763028011.0,"finished":1763028012.0},
          "modules-final":{"errors":[],"start":1763028013.0,"finished":1763028042.5}}}"#,
    )
    .unwrap();
    p
}

struct Daemon<'a> {
    bin: PathBuf,
    dir: &'a Path,
    api: String,
    holder: String,
    image: String,
}

impl Daemon<'_> {
    fn spawn(&self, vm: &TestVm, extra: &[(&str, &str)]) -> Proc {
        let host = vm.hostname.as_str();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{host}.log")))
            .unwrap();
        let child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("LABLINK_API_URL", &self.api)
            .env("LABLINK_HOLDER_URL", &self.holder)
            .env("LABLINK_HOSTNAME", host)
            .env("LABLINK_CREDENTIAL", vm.secret.expose())
            .env("LABLINK_STATE_DIR", self.dir.join(format!("{host}.state")))
            .env("LABLINK_CLIENT_IMAGE", &self.image)
            .env("LABLINK_POLL_WAIT_SECONDS", "3")
            .env("LABLINK_NVIDIA_SMI", "/nonexistent/nvidia-smi")
            .env("LABLINK_INUSE_INTERVAL_SECONDS", "1")
            .env("LABLINK_PULL_ATTEMPTS", "2")
            .env("LABLINK_SHIP_LOGS", "")
            .env("LABLINK_LOG_SINK", "none")
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the client daemon");
        Proc { child }
    }

    fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{host}.log"))).unwrap_or_default()
    }
}

/// What every test here starts: a database with `n` VMs (removed with their workspaces
/// at the end), the routes on HTTP, the holder, and a directory for the daemons' files.
struct Stack {
    _db: TestDb,
    client: tokio_postgres::Client,
    vms: Vec<TestVm>,
    hosts: Vec<String>,
    _cleanup: Cleanup,
    dir: tempfile::TempDir,
    api: ApiServer,
    holder: HolderProc,
    image: String,
}

impl Stack {
    async fn start(what: &str, n: usize) -> Self {
        let image = lablink_e2e::test_client_image();
        let db = TestDb::new().await;
        let client = db.client().await;
        let vms = create_vms(&client, &prefix(what), n, VmStatus::Initializing)
            .await
            .unwrap();
        let hosts: Vec<String> = vms.iter().map(|v| v.hostname.as_str().to_owned()).collect();
        let _cleanup = Cleanup(hosts.clone());
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start(&db.config).await.unwrap();
        let holder = HolderProc::start(&db.url, "127.0.0.1:0".parse().unwrap(), &[])
            .await
            .unwrap();
        Self {
            _db: db,
            client,
            vms,
            hosts,
            _cleanup,
            dir,
            api,
            holder,
            image,
        }
    }

    /// How this stack's client daemons are started.
    fn daemons(&self) -> Daemon<'_> {
        Daemon {
            bin: workspace_bin("lablink-client-daemon").unwrap(),
            dir: self.dir.path(),
            api: self.api.url(),
            holder: self.holder.url(),
            image: self.image.clone(),
        }
    }
}

fn pasted(code: &str) -> String {
    format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" \
         --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    )
}

/// The seat's token, from the link on its page (`/seat/<token>`).
fn seat_token(html: &str) -> String {
    let at = html.find("href=\"/seat/").expect("a seat link on the page") + "href=\"/seat/".len();
    html[at..].split('"').next().unwrap().to_owned()
}

/// A participant's request; the seat page's HTML.
async fn request_vm_page(http: &reqwest::Client, api: &str, email: &str, code: &str) -> String {
    let pasted = pasted(code);
    let page = http
        .post(format!("{api}/api/request_vm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("email", email), ("crd_command", pasted.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    page.text().await.unwrap()
}

/// A fresh code from the seat's own page (`POST /api/seat/{token}/code`).
async fn fresh_code(http: &reqwest::Client, api: &str, token: &str, code: &str) {
    let pasted = pasted(code);
    let page = http
        .post(format!("{api}/api/seat/{token}/code"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("crd_command", pasted.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    let status = page.status();
    assert!(status.is_success(), "{status}: {}", page.text().await.unwrap());
}

/// The PIN on a seat's page.
fn pin_of(html: &str) -> String {
    let start = html.find("id=\"pin\"").expect("a PIN on the success page");
    let rest = &html[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].trim().to_owned()
}

/// A participant's request; the PIN it got.
async fn request_vm(http: &reqwest::Client, api: &str, email: &str, code: &str) -> String {
    pin_of(&request_vm_page(http, api, email, code).await)
}

/// What the stand-in start-host recorded in a workspace, one line per run.
fn start_host_runs(host: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["exec", &container(host), "cat", "/tmp/start-host-runs.log"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The desktop host starts the stand-in `chrome-remote-desktop` recorded, one line each.
fn host_starts(ctr: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["exec", ctr, "cat", "/tmp/crd-host-starts.log"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every `chrome-remote-desktop --start` asked for (the stand-in records each).
fn host_start_attempts(ctr: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args(["exec", ctr, "cat", "/tmp/crd-host-start-attempts.log"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Desktop host processes running as `client` in the workspace.
fn host_processes(ctr: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            ctr,
            "pgrep",
            "-u",
            "client",
            "-f",
            "chrome-remote-desktop --start --new-session",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// What the host script says of itself (`--get-status`), asked as the daemon asks.
fn host_status(ctr: &str) -> String {
    docker(&[
        "exec",
        "--user",
        "client",
        "--env",
        "USER=client",
        "--env",
        "XDG_RUNTIME_DIR=/run/user/1000",
        ctr,
        "/opt/google/chrome-remote-desktop/chrome-remote-desktop",
        "--get-status",
    ])
}

/// The stand-in's token for a code (its registration names it).
fn code_token(code: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(code.as_bytes()))[..16].to_owned()
}

async fn vm_with(
    client: &tokio_postgres::Client,
    host: &lablink_core::domain::Hostname,
    what: &str,
    within: Duration,
    f: impl Fn(&vms::Vm) -> bool,
) -> anyhow::Result<vms::Vm> {
    eventually(what, within, || async {
        let vm = vms::get_vm(client, host).await.ok()??;
        f(&vm).then_some(vm)
    })
    .await
}

const CODE: &str = "4/0AVMBsJh1-workspaceParticipantCodeXyZ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_gets_start_host_in_the_workspace_as_the_desktop_user_and_restarts_repeat_nothing() {
    let s = Stack::start("a", 1).await;
    let (client, vm, host, dir) = (&s.client, &s.vms[0], s.hosts[0].clone(), s.dir.path());
    let (_git, repo) = lablink_e2e::git_daemon(dir).await;
    let script = dir.join("startup.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\necho \"startup as $(id -un) for $LABLINK_DESKTOP_USER in $VM_NAME\" > /var/tmp/startup-ran\necho installed\n",
    )
    .unwrap();
    let cloud_init = cloud_init_fixture(dir);
    let (api, holder, d) = (&s.api, &s.holder, s.daemons());
    let env = [
        ("LABLINK_TUTORIAL_REPO", repo.as_str()),
        ("LABLINK_STARTUP_SCRIPT", script.to_str().unwrap()),
        ("LABLINK_STARTUP_ON_ERROR", "fail"),
        ("LABLINK_SUBJECT_SOFTWARE", "sleap"),
        ("LABLINK_CLOUD_INIT_STATUS", cloud_init.to_str().unwrap()),
    ];
    let t0 = Instant::now();
    let mut daemon = d.spawn(vm, &env);

    // Running once the workspace is prepared, with every phase's timing reported.
    let running = vm_with(
        client,
        &vm.hostname,
        "running with timings",
        Duration::from_secs(60),
        |v| v.status == VmStatus::Running && v.startup_script.is_some() && v.cloud_init.is_some(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    eprintln!(
        "launch → running in {:?}: image {:?} s, container {:?} s, clone {:?} s, script {:?} s",
        t0.elapsed(),
        running.image_pull.map(|p| p.seconds()),
        running.container.map(|p| p.seconds()),
        running.tutorial_clone.map(|p| p.seconds()),
        running.startup_script.map(|p| p.seconds()),
    );
    assert!(running.image_pull.is_some() && running.container.is_some() && running.tutorial_clone.is_some());
    assert_eq!(
        running.cloud_init.unwrap().seconds(),
        42.5,
        "from cloud-init's record"
    );
    assert_eq!(running.status_reason, None, "nothing went wrong");

    // ONE container, labelled, host network, restart policy, home on the volume, and
    // not the image's own entrypoint.
    let ctr = container(&host);
    let labelled = docker(&[
        "ps",
        "--filter",
        &format!("label=lablink.hostname={host}"),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(labelled, ctr);
    let inspect = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}} {{.HostConfig.RestartPolicy.Name}} {{range .Mounts}}{{.Name}}:{{.Destination}}:{{.RW}} {{end}}",
        &ctr,
    ]);
    assert_eq!(
        inspect,
        format!("host unless-stopped lablink-home-{host}:/home:true :/run/lablink-helper:false"),
        "the home on its volume, the helper's directory read-only"
    );
    // The daemon's short commands go through one helper process in the workspace: root
    // there, with the container's own limits (no_new_privs, the dropped capabilities
    // out of its bounding set), and nothing of it open to the desktop user.
    assert!(
        d.log(&host).contains("the workspace helper runs"),
        "{}",
        d.log(&host)
    );
    let helper = docker(&[
        "exec",
        &ctr,
        "pgrep",
        "-u",
        "root",
        "-f",
        "__lablink-workspace-helper",
    ]);
    assert_eq!(helper.lines().count(), 1, "one helper: {helper}");
    let status = docker(&["exec", &ctr, "cat", &format!("/proc/{helper}/status")]);
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    // AUDIT_WRITE 29, MKNOD 27, NET_RAW 13, SETPCAP 8, SYS_CHROOT 18.
    for bit in [29, 27, 13, 8, 18] {
        assert_eq!(
            bounding & (1 << bit),
            0,
            "capability {bit} is dropped: {bounding:x}"
        );
    }
    for what in [format!("/proc/{helper}/fd"), "/run/lablink-helper".to_owned()] {
        let (code, _, err) = exec_in(&ctr, &["--user", "client"], &["ls", &what], "");
        assert!(
            code != 0 && err.contains("Permission denied"),
            "the desktop user lists {what}: {err}"
        );
    }
    assert!(
        docker(&[
            "exec",
            &ctr,
            "sh",
            "-c",
            "test -e /var/tmp/image-entrypoint-ran && echo ran || echo no"
        ]) == "no",
        "the image's own entrypoint must not run"
    );
    // The desktop user cannot become root: no-new-privileges makes the kernel ignore
    // the image's set-uid program (without it, `suid-id -u` prints 0).
    assert_eq!(
        docker(&["inspect", "--format", "{{json .HostConfig.SecurityOpt}}", &ctr]),
        r#"["no-new-privileges"]"#
    );
    assert_eq!(
        docker(&[
            "exec",
            "--user",
            "root",
            &ctr,
            "stat",
            "-c",
            "%U %A",
            "/usr/local/bin/suid-id"
        ]),
        "root -rwsr-xr-x",
        "the image has a set-uid root program"
    );
    assert_eq!(
        docker(&["exec", "--user", "client", &ctr, "suid-id", "-u"]),
        "1000"
    );
    // The tutorial is on the desktop user's Desktop, owned by that user; the startup
    // script ran as root inside the workspace with the classic environment.
    assert_eq!(
        docker(&[
            "exec",
            &ctr,
            "stat",
            "-c",
            "%U",
            "/home/client/Desktop/tutorial",
            "/home/client/Desktop/tutorial/README.md"
        ]),
        "client\nclient"
    );
    assert_eq!(
        docker(&["exec", &ctr, "cat", "/var/tmp/startup-ran"]),
        format!("startup as root for client in {host}")
    );

    // In use while the subject software (`sleap-label` matches `sleap`) runs inside.
    docker(&["exec", "--detach", "--user", "client", &ctr, "sleap-label"]);
    vm_with(client, &vm.hostname, "in use", Duration::from_secs(15), |v| {
        v.in_use
    })
    .await
    .unwrap();
    docker(&["exec", &ctr, "pkill", "-f", "sleap-label"]);
    vm_with(client, &vm.hostname, "not in use", Duration::from_secs(15), |v| {
        !v.in_use
    })
    .await
    .unwrap();

    // A participant's request: start-host runs in the workspace as `client`, with the
    // code, the name and the PIN twice, and an empty DISPLAY.
    holder
        .wait_for_waiters(&reqwest::Client::new(), 1, Duration::from_secs(20))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let asked = Instant::now();
    let seat = request_vm_page(&http, &api.url(), "ada@example.edu", CODE).await;
    let token = seat_token(&seat);
    let pin = pin_of(&seat);
    let runs = eventually("start-host in the workspace", Duration::from_secs(20), || async {
        let r = start_host_runs(&host);
        (!r.is_empty()).then_some(r)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    eprintln!("request → start-host in the workspace in {:?}", asked.elapsed());
    assert_eq!(
        runs,
        [format!(
            "user=client home=/home/client display=[] args=--code={CODE} \
             --redirect-url=https://remotedesktop.google.com/_/oauthredirect --name={host} \
             --display-name={host} --no-start pin1={pin} pin2={pin}"
        )]
    );
    let done = vm_with(
        client,
        &vm.hostname,
        "start-host's outcome",
        Duration::from_secs(30),
        |v| v.start_host.is_some(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    eprintln!(
        "request → desktop host running (outcome reported) in {:?}",
        asked.elapsed()
    );
    let outcome = done.start_host.unwrap();
    assert!(outcome.ok && outcome.exit_code == Some(0), "{outcome:?}");
    assert_eq!(done.status, VmStatus::Running);
    let registration = "ls /home/client/.config/chrome-remote-desktop | grep -c '^host#'";
    assert_eq!(docker(&["exec", &ctr, "sh", "-c", registration]), "1");
    // The outcome came only once the host ran: as `client`, the way the systemd unit
    // starts it, from the registration of this code; one host process.
    let starts = host_starts(&ctr);
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(
        starts[0].starts_with("user=client args=--start --new-session config=")
            && starts[0].contains(&format!("standin-{}", code_token(CODE))),
        "{starts:?}"
    );
    assert_eq!(host_processes(&ctr), 1);
    assert_eq!(host_status(&ctr), "STARTED");

    // A fresh code (the participant's Google account was the wrong one): the host is
    // stopped, start-host registers again, and the host runs on the new registration.
    client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let fresh = "4/0AVMBsJh1-workspaceFreshCodeAbC";
    fresh_code(&http, &api.url(), &token, fresh).await;
    eventually(
        "the host on the fresh registration",
        Duration::from_secs(30),
        || async {
            let s = host_starts(&ctr);
            (s.len() == 2 && s[1].contains(&format!("standin-{}", code_token(fresh)))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    vm_with(
        client,
        &vm.hostname,
        "the fresh code acknowledged",
        Duration::from_secs(20),
        |v| v.start_host.as_ref().is_some_and(|o| o.ok) && v.acknowledged_at.is_some(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    assert_eq!(host_processes(&ctr), 1, "the old host was stopped");
    assert_eq!(start_host_runs(&host).len(), 2);

    // The daemon restarts: nothing is prepared or run again, and the running host is
    // adopted (no start asked for).
    let attempts = host_start_attempts(&ctr);
    daemon.kill().await;
    let _again = d.spawn(vm, &env);
    eventually(
        "the restarted daemon to settle",
        Duration::from_secs(20),
        || async {
            d.log(&host)
                .contains("the workspace was prepared before")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        start_host_runs(&host).len(),
        2,
        "no further start-host after a daemon restart"
    );
    assert_eq!(
        host_processes(&ctr),
        1,
        "the running host is kept, not started twice"
    );
    assert_eq!(
        host_start_attempts(&ctr),
        attempts,
        "no --start asked for after a daemon restart"
    );
    assert_eq!(
        docker(&["exec", &ctr, "sh", "-c", "cat /var/tmp/startup-ran | wc -l"]),
        "1"
    );

    // The host dies (killed), and its next start asks to be started again (exit 41, as
    // CRD's host does after a config change): the daemon's supervisor starts it again
    // both times, from the registration, as `client`, without start-host.
    docker(&[
        "exec",
        "--user",
        "client",
        &ctr,
        "touch",
        "/home/client/.config/chrome-remote-desktop/standin-relaunch",
    ]);
    docker(&[
        "exec",
        &ctr,
        "pkill",
        "-u",
        "client",
        "-f",
        "chrome-remote-desktop --start --new-session",
    ]);
    eventually(
        "the host started again twice (after the kill, after its exit 41)",
        Duration::from_secs(30),
        || async { (host_starts(&ctr).len() == 4 && host_processes(&ctr) == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", host_starts(&ctr), d.log(&host)));
    assert!(
        d.log(&host)
            .contains("the desktop host asked to be started again (exit 41)"),
        "{}",
        d.log(&host)
    );

    // The container restarts (its runtime directory must be made again): the host runs
    // again from the kept registration, as `client`, and start-host does not run again.
    docker(&["exec", "--user", "root", &ctr, "rm", "-rf", "/run/user/1000"]);
    docker(&["restart", "--time", "1", &ctr]);
    let starts = eventually(
        "the desktop host started after the restart",
        Duration::from_secs(30),
        || async { (host_starts(&ctr).len() == 5 && host_processes(&ctr) == 1).then(|| host_starts(&ctr)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    assert!(
        starts[4].starts_with("user=client args=--start --new-session config=")
            && starts[4].contains(&format!("standin-{}", code_token(fresh))),
        "{starts:?}"
    );
    assert_eq!(
        start_host_runs(&host).len(),
        2,
        "no start-host after a container restart"
    );
    assert_eq!(
        docker(&["exec", &ctr, "sh", "-c", registration]),
        "1",
        "the registration is kept"
    );
    let vm_now = vms::get_vm(client, &vm.hostname).await.unwrap().unwrap();
    assert_eq!(vm_now.status, VmStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failures_follow_the_on_error_policy_and_start_host_failures_reach_the_admin() {
    let s = Stack::start("b", 3).await;
    let (client, vms_, hosts, dir) = (&s.client, &s.vms, &s.hosts, s.dir.path());
    let failing = dir.join("failing.sh");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho step one\necho 'apt-get: package sleap-extras not found' >&2\nexit 3\n",
    )
    .unwrap();
    let (api, holder, d) = (&s.api, &s.holder, s.daemons());
    let script = failing.to_str().unwrap();
    // `fail`: error, out of the pool. `continue`, with a repository that cannot be
    // cloned: running, both failures reported. An image no registry has: error.
    let _fail = d.spawn(
        &vms_[0],
        &[
            ("LABLINK_STARTUP_SCRIPT", script),
            ("LABLINK_STARTUP_ON_ERROR", "fail"),
        ],
    );
    let _cont = d.spawn(
        &vms_[1],
        &[
            ("LABLINK_STARTUP_SCRIPT", script),
            ("LABLINK_STARTUP_ON_ERROR", "continue"),
            ("LABLINK_TUTORIAL_REPO", "git://127.0.0.1:1/nowhere.git"),
        ],
    );
    let _nopull = d.spawn(
        &vms_[2],
        &[("LABLINK_CLIENT_IMAGE", "lablink-test/no-such-image:1")],
    );

    let failed = vm_with(client, &vms_[0].hostname, "error", Duration::from_secs(60), |v| {
        v.status == VmStatus::Error
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[0])));
    let reason = failed.status_reason.unwrap_or_default();
    assert!(reason.contains("startup script failed (exit 3)"), "{reason}");
    assert!(
        reason.contains("package sleap-extras not found"),
        "the script's last lines: {reason}"
    );
    let cont = vm_with(
        client,
        &vms_[1].hostname,
        "running",
        Duration::from_secs(60),
        |v| v.status == VmStatus::Running,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[1])));
    let reason = cont.status_reason.unwrap_or_default();
    assert!(reason.contains("tutorial repository not cloned"), "{reason}");
    assert!(reason.contains("startup script failed (exit 3)"), "{reason}");
    let nopull = vm_with(client, &vms_[2].hostname, "error", Duration::from_secs(60), |v| {
        v.status == VmStatus::Error
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[2])));
    let reason = nopull.status_reason.unwrap_or_default();
    assert!(
        reason.contains("cannot pull the client image lablink-test/no-such-image:1 (2 attempts)"),
        "{reason}"
    );
    // Only the `continue` VM is offered to participants.
    assert_eq!(vms::free_seat_count(client).await.unwrap(), 1);

    // A code Google refuses: start-host's failure and its redacted output reach the
    // admin's view of the VM.
    holder
        .wait_for_waiters(&reqwest::Client::new(), 1, Duration::from_secs(20))
        .await
        .unwrap();
    let expired = "4/0AVMBsJh1-expired-participant-code";
    let pin = request_vm(&reqwest::Client::new(), &api.url(), "bob@example.edu", expired).await;
    let vm = vm_with(
        client,
        &vms_[1].hostname,
        "start-host's failure",
        Duration::from_secs(20),
        |v| v.start_host.is_some(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[1])));
    let outcome = vm.start_host.unwrap();
    assert!(!outcome.ok);
    assert_eq!(outcome.exit_code, Some(1));
    assert!(
        outcome.output.contains(
            "Couldn't start host: OAuth error. (the code <code> was refused; PIN <pin> not stored)"
        ),
        "{outcome:?}"
    );
    assert!(!outcome.output.contains(expired) && !outcome.output.contains(&pin));
    assert_eq!(vm.status, VmStatus::Error);

    // The participant pastes a fresh code (past the seat's 20 s between codes): it
    // reaches the same workspace, start-host registers with it, and the seat is ready.
    client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let fresh = "4/0AVMBsJh1-fresh-participant-code";
    let new_pin = request_vm(&reqwest::Client::new(), &api.url(), "bob@example.edu", fresh).await;
    let vm = vm_with(
        client,
        &vms_[1].hostname,
        "start-host's success with the fresh code",
        Duration::from_secs(20),
        |v| v.status == VmStatus::Running && v.start_host.as_ref().is_some_and(|r| r.ok),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[1])));
    assert!(vm.acknowledged_at.is_some());
    let runs = start_host_runs(&hosts[1]);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[1].contains(&format!("--code={fresh}")) && runs[1].contains(&format!("pin1={new_pin}")));

    // The admin releases the seat, keeping the participant's files for the next export:
    // a new container on a new home volume (no registration, no files), the files kept
    // outside every container without the registration, and the VM back in the pool.
    let ws = container(&hosts[1]);
    let old_id = docker(&["inspect", "--format", "{{.Id}}", &ws]);
    docker(&[
        "exec",
        "-u",
        "client",
        &ws,
        "sh",
        "-c",
        "echo tracked > /home/client/results.slp",
    ]);
    assert_eq!(vms::free_seat_count(client).await.unwrap(), 0);
    let released = lablink_db::seats::release(client, &vms_[1].hostname, true, "admin")
        .await
        .unwrap();
    assert!(matches!(released, lablink_db::seats::ActionOutcome::Done { .. }));
    eventually(
        "the released VM back in the pool",
        Duration::from_secs(60),
        || async { (vms::free_seat_count(client).await.ok()? == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[1])));
    let new_id = docker(&["inspect", "--format", "{{.Id}}", &ws]);
    assert_ne!(old_id, new_id, "a new container");
    let left = docker(&[
        "exec",
        &ws,
        "sh",
        "-c",
        "ls -A /home/client; ls /home/client/.config/chrome-remote-desktop 2>&1 || true",
    ]);
    assert!(!left.contains("results.slp") && !left.contains("host#"), "{left}");
    let kept_root = dir.join(format!("{}.state/kept", hosts[1]));
    let kept: Vec<_> = std::fs::read_dir(&kept_root).unwrap().flatten().collect();
    assert_eq!(kept.len(), 1);
    let kept_home = kept[0].path().join("home/client");
    assert_eq!(
        std::fs::read_to_string(kept_home.join("results.slp")).unwrap(),
        "tracked\n"
    );
    assert!(
        !kept_home.join(".config/chrome-remote-desktop").exists(),
        "the registration is not kept"
    );
    // The next participant's code reaches the new workspace.
    let next = "4/0AVMBsJh1-next-participant-code";
    request_vm(&reqwest::Client::new(), &api.url(), "cy@example.edu", next).await;
    eventually(
        "start-host for the next participant",
        Duration::from_secs(20),
        || async {
            let runs = start_host_runs(&hosts[1]);
            (runs.len() == 1 && runs[0].contains(&format!("--code={next}"))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&hosts[1])));
}

/// The daemon is killed while the startup script runs, then while start-host runs, in the
/// workspace (killing `docker exec` stops neither): each time the restarted daemon waits
/// for that run to end and never runs it again (the script's unknown outcome is reported
/// under `continue`; the host is found registered, so the one-time code is spent once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_the_script_or_start_host_runs_neither_twice() {
    let s = Stack::start("c", 1).await;
    let (client, vm, host, dir) = (&s.client, &s.vms[0], s.hosts[0].clone(), s.dir.path());
    let (api, holder, d) = (&s.api, &s.holder, s.daemons());
    // A startup script that takes a while: the daemon is killed while it runs, too.
    let script = dir.join("slow-startup.sh");
    std::fs::write(&script, "#!/bin/sh\necho run >> /var/tmp/script-runs\nsleep 3\n").unwrap();
    let env = [("LABLINK_STARTUP_SCRIPT", script.to_str().unwrap())];
    let daemon = d.spawn(vm, &env);
    eventually("the startup script begun", Duration::from_secs(30), || async {
        let out = std::process::Command::new("docker")
            .args(["exec", &container(&host), "cat", "/var/tmp/script-runs"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    let mut killed = daemon;
    killed.kill().await;
    let mut daemon = d.spawn(vm, &env);
    let reported = vm_with(
        client,
        &vm.hostname,
        "running after the interrupted script",
        Duration::from_secs(40),
        |v| v.status == VmStatus::Running,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    let reason = reported.status_reason.unwrap_or_default();
    assert!(
        reason.contains("interrupted by a restart of the daemon"),
        "{reason}"
    );
    assert_eq!(
        docker(&["exec", &container(&host), "cat", "/var/tmp/script-runs"]),
        "run",
        "the startup script ran once"
    );
    holder
        .wait_for_waiters(&reqwest::Client::new(), 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    let slow = "4/0AVMBsJh1-slow-network-participant-code";
    request_vm(&reqwest::Client::new(), &api.url(), "cy@example.edu", slow).await;
    // start-host has begun (it records first, then takes 4 s): kill the daemon now.
    eventually("start-host begun", Duration::from_secs(20), || async {
        (!start_host_runs(&host).is_empty()).then_some(())
    })
    .await
    .unwrap();
    daemon.kill().await;
    let _again = d.spawn(vm, &[]);
    let vm_now = vm_with(
        client,
        &vm.hostname,
        "the interrupted run's outcome",
        Duration::from_secs(40),
        |v| v.start_host.is_some(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    let outcome = vm_now.start_host.unwrap();
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(vm_now.status, VmStatus::Running);
    assert!(
        d.log(&host)
            .contains("waiting for an earlier run in the workspace to end"),
        "{}",
        d.log(&host)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        start_host_runs(&host).len(),
        1,
        "the one-time code was spent once"
    );
    let registration = "ls /home/client/.config/chrome-remote-desktop | grep -c '^host#'";
    assert_eq!(
        docker(&["exec", &container(&host), "sh", "-c", registration]),
        "1"
    );
}

/// `docker exec -i` in `ctr` with `args` (exec options, then the command), `stdin` fed;
/// (exit code, stdout, stderr).
fn exec_in(ctr: &str, opts: &[&str], argv: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("docker")
        .arg("exec")
        .arg("--interactive")
        .args(opts)
        .arg(ctr)
        .args(argv)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sequence the daemon ran before CRD 148 (start-host as the user with only `HOME`,
/// no runtime directory, systemd left to start the host; plain `--start` after a
/// container restart) fails against the stand-ins at each step, as the real CRD 148
/// does in a container; the sequence the daemon runs now gives a running host.
#[test]
fn the_old_daemon_sequence_fails_against_crd_148_and_the_new_one_starts_a_host() {
    let image = lablink_e2e::test_client_image();
    let ctr = format!("lablink-crd148-{:06x}", rand::random::<u32>() & 0xff_ffff);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "--force", &self.0])
                .output();
        }
    }
    let _gone = Gone(ctr.clone());
    docker(&[
        "run",
        "--detach",
        "--name",
        &ctr,
        "--init",
        "--security-opt",
        "no-new-privileges",
        "--entrypoint",
        "sleep",
        &image,
        "infinity",
    ]);
    let start_host = "/opt/google/chrome-remote-desktop/start-host";
    let crd = "/opt/google/chrome-remote-desktop/chrome-remote-desktop";
    let code = "--code=4/0AVMBsJh1-oldSequenceCode";
    let pins = "123456\n123456\n";
    let old_user = ["--user", "client", "--env", "HOME=/home/client"];
    let env = [
        "--user",
        "client",
        "--env",
        "HOME=/home/client",
        "--env",
        "USER=client",
        "--env",
        "LOGNAME=client",
        "--env",
        "XDG_RUNTIME_DIR=/run/user/1000",
    ];
    let registered = || {
        docker(&[
            "exec",
            &ctr,
            "sh",
            "-c",
            "ls /home/client/.config/chrome-remote-desktop 2>/dev/null | grep -c '^host#' || true",
        ])
    };

    // The old start-host run: no runtime directory (Docker runs no logind), no $USER.
    let (code_, _, err) = exec_in(&ctr, &old_user, &[start_host, code, "--name=vm-1"], pins);
    assert_eq!(
        code_, 133,
        "start-host dies of SIGTRAP without /run/user/1000: {err}"
    );
    assert_eq!(registered(), "0");
    // As root without --user-name, as Google's refuses.
    let (code_, _, err) = exec_in(
        &ctr,
        &["--user", "root"],
        &[start_host, code, "--name=vm-1"],
        pins,
    );
    assert_eq!(code_, 1);
    assert!(err.contains("--user-name"), "{err}");
    // With the runtime directory but a wrong $USER: the same silent abort.
    docker(&[
        "exec",
        "--user",
        "0",
        &ctr,
        "install",
        "-d",
        "-m",
        "0700",
        "-o",
        "1000",
        "-g",
        "1000",
        "/run/user/1000",
    ]);
    let mut wrong_user = env.to_vec();
    wrong_user[5] = "USER=root";
    let (code_, _, _) = exec_in(&ctr, &wrong_user, &[start_host, code, "--name=vm-1"], pins);
    assert_eq!(code_, 133, "a $USER that is not the running user");
    // Right environment, but no --no-start: it registers, then fails to start the host
    // (no systemd, no sudo), and no host runs.
    let (code_, _, err) = exec_in(&ctr, &env, &[start_host, code, "--name=vm-1"], pins);
    assert_eq!(code_, 1, "{err}");
    assert!(err.contains("Failed to start host"), "{err}");
    assert_eq!(registered(), "1", "registered although it failed");
    assert_eq!(
        exec_in(&ctr, &env, &[crd, "--get-status"], "").1.trim(),
        "STOPPED"
    );
    // The old restart path: plain --start needs `user-session`, which 148 does not ship.
    let (code_, _, err) = exec_in(&ctr, &env, &[crd, "--start"], "");
    assert_eq!(code_, 127, "{err}");
    assert_eq!(
        exec_in(&ctr, &env, &[crd, "--get-status"], "").1.trim(),
        "STOPPED"
    );
    // --new-session outside the unit's session environment is not a host either.
    let (code_, _, _) = exec_in(&ctr, &env, &[crd, "--start", "--new-session"], "");
    assert_eq!(code_, 1);

    // The sequence the daemon runs now.
    let (code_, _, err) = exec_in(
        &ctr,
        &env,
        &[
            start_host,
            code,
            "--name=vm-1",
            "--display-name=vm-1",
            "--no-start",
        ],
        pins,
    );
    assert_eq!(code_, 0, "{err}");
    let mut session = vec!["exec", "--detach"];
    session.extend(env);
    session.extend(["--env", "XDG_SESSION_CLASS=user", "--env", "XDG_SESSION_TYPE=x11"]);
    session.extend([ctr.as_str(), crd, "--start", "--new-session"]);
    docker(&session);
    let mut status = String::new();
    for _ in 0..50 {
        status = exec_in(&ctr, &env, &[crd, "--get-status"], "")
            .1
            .trim()
            .to_owned();
        if status == "STARTED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, "STARTED");
    let (code_, out, _) = exec_in(&ctr, &env, &[crd, "--stop"], "");
    assert_eq!(code_, 0);
    assert!(out.starts_with("Killing process"), "{out}");
    assert_eq!(
        exec_in(&ctr, &env, &[crd, "--get-status"], "").1.trim(),
        "STOPPED"
    );
}

/// A code Google accepts, but a desktop host that exits at once every time (its
/// credentials turned out invalid): the seat is never `ready`, the participant is not
/// told their code was refused, and the admin sees the VM's error; the assignment stays
/// unacknowledged (the holder hands it over again, and it is not run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_host_that_will_not_start_is_the_vms_error_and_the_seat_is_not_ready() {
    let s = Stack::start("d", 1).await;
    let (client, vm, host) = (&s.client, &s.vms[0], s.hosts[0].clone());
    let (api, holder, d) = (&s.api, &s.holder, s.daemons());
    let _daemon = d.spawn(vm, &[("LABLINK_START_HOST_TIMEOUT_SECONDS", "8")]);
    vm_with(client, &vm.hostname, "running", Duration::from_secs(60), |v| {
        v.status == VmStatus::Running
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    holder
        .wait_for_waiters(&reqwest::Client::new(), 1, Duration::from_secs(20))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let seat = request_vm_page(
        &http,
        &api.url(),
        "dee@example.edu",
        "4/0AVMBsJh1-badhost-participant-code",
    )
    .await;
    let token = seat_token(&seat);
    let failed = vm_with(
        client,
        &vm.hostname,
        "the VM's error",
        Duration::from_secs(60),
        |v| v.status == VmStatus::Error,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log(&host)));
    let reason = failed.status_reason.unwrap_or_default();
    assert!(reason.contains("the desktop host does not start"), "{reason}");
    assert!(reason.contains("Host exited with code 102"), "{reason}");
    assert!(
        failed.acknowledged_at.is_none() && failed.start_host.is_none(),
        "not acknowledged"
    );
    // The host was tried again and again; start-host ran once.
    let ctr = container(&host);
    assert!(host_starts(&ctr).len() >= 2, "{:?}", host_starts(&ctr));
    assert_eq!(start_host_runs(&host).len(), 1);
    // The participant's page: not ready, not "refused", the VM's trouble.
    let view: serde_json::Value = http
        .get(format!("{}/api/seat/{token}", api.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["state"], "connecting", "{view}");
    assert_eq!(view["vm_status"], "error", "{view}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        start_host_runs(&host).len(),
        1,
        "handed over again, never run again"
    );
}
