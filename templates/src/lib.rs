//! LabLink's HTML pages, rendered with maud (every interpolated value is escaped).
//! Self-contained: inline CSS and a few lines of JS, no CDN, readable on a phone.
//! Pages take plain values; they know nothing of HTTP or the database.

pub mod admin;

pub use maud::Markup;
use maud::{DOCTYPE, PreEscaped, html};

pub const CRD_HEADLESS_URL: &str = "https://remotedesktop.google.com/headless";
pub const CRD_ACCESS_URL: &str = "https://remotedesktop.google.com/access";

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330;line-height:1.5}
main{max-width:40rem;margin:0 auto;padding:1.5rem 1rem}
h1{font-size:1.6rem;margin:.2rem 0 1rem}
.card{background:#fff;border-radius:.6rem;padding:1.2rem;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:1rem}
label{display:block;font-weight:600;margin:.8rem 0 .3rem}
input[type=email],textarea{width:100%;padding:.6rem;border:1px solid #b8bfcc;border-radius:.4rem;font:inherit}
textarea{min-height:6rem;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9rem}
button{margin-top:1rem;padding:.7rem 1.4rem;border:0;border-radius:.4rem;background:#2456d6;color:#fff;font:inherit;font-weight:600;cursor:pointer}
button:hover{background:#1b44ab}
.error{background:#fdecec;border:1px solid #e3a1a1;color:#8a1c1c;padding:.7rem;border-radius:.4rem}
.count{font-size:1.1rem}
.count strong{font-size:1.4rem}
.big{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.6rem;font-weight:700;letter-spacing:.08em}
ol{padding-left:1.3rem}
.hint{color:#5a6275;font-size:.9rem}
a{color:#2456d6}
"#;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · LabLink" }
                style { (PreEscaped(CSS)) }
            }
            body { main { (body) } }
        }
    }
}

/// What the participant page shows.
pub struct ParticipantPage<'a> {
    /// Free VMs right now (kept live by the page's script).
    pub free_vms: i64,
    /// What the participant typed, kept when the form comes back with an error (the
    /// code in the command is still good if no VM took it).
    pub email: &'a str,
    pub crd_command: &'a str,
    pub error: Option<&'a str>,
    /// The workshop has an access code: the form asks for it.
    pub ask_code: bool,
}

/// `GET /` and the form re-rendered with an error.
pub fn participant_page(p: &ParticipantPage<'_>) -> Markup {
    layout(
        "Get a VM",
        html! {
            h1 { "Get your lab VM" }
            div.card {
                p.count { "Free VMs right now: " strong #free-count { (p.free_vms) } }
                ol {
                    li { "Open " a href=(CRD_HEADLESS_URL) target="_blank" rel="noopener" { "Google's Chrome Remote Desktop set-up page" }
                         ", click " em { "Begin" } ", " em { "Next" } ", " em { "Authorize" } "." }
                    li { "Copy the " strong { "Debian Linux" } " command it shows (it starts with " code { "DISPLAY=" } ")." }
                    li { "Paste it below with your email and press " em { "Get my VM" } "." }
                }
            }
            form.card method="post" action="/api/request_vm" {
                @if let Some(e) = p.error {
                    p.error role="alert" #form-error { (e) }
                }
                label for="email" { "Email" }
                input #email type="email" name="email" required autocomplete="email" value=(p.email);
                label for="crd_command" { "Chrome Remote Desktop command" }
                textarea #crd_command name="crd_command" required spellcheck="false"
                    placeholder="DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0A…\" …" { (p.crd_command) }
                p.hint { "The code in the command works once and expires after a few minutes; get a fresh one if it is old." }
                @if p.ask_code {
                    label for="access_code" { "Workshop access code" }
                    input #access_code type="text" name="access_code" required autocomplete="off" spellcheck="false";
                    p.hint { "The code the workshop staff gave you." }
                }
                button type="submit" { "Get my VM" }
            }
            script { (PreEscaped(COUNT_JS)) }
        },
    )
}

const COUNT_JS: &str = r#"
(function(){var el=document.getElementById('free-count');
function poll(){fetch('/api/unassigned_vms_count',{cache:'no-store'}).then(function(r){return r.ok?r.json():null})
.then(function(j){if(j&&typeof j.count==='number'){el.textContent=j.count;}}).catch(function(){});}
setInterval(poll,5000);})();
"#;

/// Where a seat stands (the names of `lablink_db::seats::SeatState`, which the page's
/// script also reads from `GET /api/seat/{token}`).
pub const SEAT_STATES: [&str; 6] = ["connecting", "ready", "refused", "released", "reassigned", "gone"];

/// What the seat page shows: the success page after a request, and `GET /seat/{token}`.
pub struct SeatPage<'a> {
    /// The seat's token: the page's own address and the source of its live state.
    pub token: &'a str,
    pub hostname: &'a str,
    /// While the seat is the participant's.
    pub pin: Option<&'a str>,
    /// One of [`SEAT_STATES`].
    pub state: &'a str,
    /// What just happened ("Your new code was sent…"), if anything.
    pub notice: Option<&'a str>,
    /// Why a fresh code was refused, if it was.
    pub error: Option<&'a str>,
    /// What was typed, kept when the form comes back with an error.
    pub crd_command: &'a str,
    /// When the workshop's VMs are destroyed (`YYYY-MM-DD HH:MM`, UTC), once that is near.
    pub fleet_ends_at: Option<&'a str>,
}

/// The seat's live page: the state, the PIN and what to do, updated without reload
/// from `GET /api/seat/{token}`; the form for a fresh code while the seat is theirs.
pub fn seat_page(p: &SeatPage<'_>) -> Markup {
    let ended = matches!(p.state, "released" | "reassigned" | "gone");
    let link = format!("/seat/{}", p.token);
    layout(
        "Your VM",
        html! {
            h1 { "Your VM" }
            @if let Some(n) = p.notice {
                p.card #notice role="status" { (n) }
            }
            p.card.error #fleet-end role="alert" hidden[p.fleet_ends_at.is_none()] {
                "The workshop's VMs will be shut down at "
                strong #fleet-end-time { (p.fleet_ends_at.unwrap_or("")) }
                " (UTC). Save your work before then: download it, or push it to your own repository."
            }
            div.card #seat data-token=(p.token) data-state=(p.state) {
                p { "Your VM: " }
                p.big #hostname { (p.hostname) }
                div #pin-box hidden[ended || p.pin.is_none()] {
                    p { "Your PIN: " }
                    p.big #pin { (p.pin.unwrap_or("")) }
                    p.hint { "Keep this PIN: you type it every time you connect." }
                }
                p #state-connecting hidden[p.state != "connecting"] {
                    strong { "Connecting your VM… " }
                    "Your code is on its way to " (p.hostname) "; this page changes by itself when it is registered (usually within a minute)."
                }
                // The VM itself failed (its desktop host does not start, start-host could
                // not run): not the participant's code. Shown by the script from
                // `vm_status`.
                p.error #vm-trouble hidden {
                    "Your VM has a problem starting its desktop; the workshop staff can see it. Your code was not refused: wait a few minutes, or ask the staff."
                }
                div #state-ready hidden[p.state != "ready"] {
                    p { strong { "Ready: " } "open " a href=(CRD_ACCESS_URL) target="_blank" rel="noopener" { "remotedesktop.google.com/access" }
                        " with the same Google account, click " strong { (p.hostname) } " and enter your PIN." }
                }
                p.error #state-refused hidden[p.state != "refused"] {
                    "Your code was refused. A code works once, for a few minutes, with the Google account that made it: get a new one and paste it below."
                }
                p.error #state-released hidden[p.state != "released"] {
                    "The workshop staff released this seat. To get a VM again, use the " a href="/" { "start page" } "."
                }
                p.error #state-reassigned hidden[p.state != "reassigned"] {
                    "The workshop staff moved this seat to another participant. Ask them if this is unexpected."
                }
                p.error #state-gone hidden[p.state != "gone"] {
                    "This VM no longer exists (it was replaced, or the workshop's VMs were removed). To get a VM again, use the " a href="/" { "start page" } "."
                }
                p.hint { "Bookmark this page to come back to your VM: " a #seat-link href=(link) { "your seat's page" } "." }
            }
            form.card #code-form method="post" action=(format!("/api/seat/{}/code", p.token)) hidden[ended] {
                @if let Some(e) = p.error {
                    p.error role="alert" #form-error { (e) }
                }
                label for="crd_command" { "A new Chrome Remote Desktop command" }
                p.hint { "Code expired, mistyped, or the desktop went to the wrong Google account? Get a new command from "
                    a href=(CRD_HEADLESS_URL) target="_blank" rel="noopener" { "Google's set-up page" } " and paste it here: your VM registers again with it." }
                textarea #crd_command name="crd_command" required spellcheck="false"
                    placeholder="DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0A…\" …" { (p.crd_command) }
                button type="submit" { "Send the new code" }
            }
            script { (PreEscaped(SEAT_JS)) }
        },
    )
}

/// Every page while the deployment is paused between workshops (503).
pub fn paused_page(message: &str) -> Markup {
    layout(
        "Paused between workshops",
        html! {
            h1 { "Paused between workshops" }
            div.card {
                p role="status" #paused { (message) }
            }
        },
    )
}

/// `GET /seat/{token}` for a token that names no seat (404).
pub fn seat_missing_page() -> Markup {
    layout(
        "No such seat",
        html! {
            h1 { "No such seat" }
            div.card {
                p.error role="alert" { "This link does not open any seat. Check that it was copied whole, or get a VM from the " a href="/" { "start page" } "." }
            }
        },
    )
}

const SEAT_JS: &str = r#"
(function(){var seat=document.getElementById('seat'),token=seat.getAttribute('data-token');
var states=['connecting','ready','refused','released','reassigned','gone'],ended=['released','reassigned','gone'];
function show(j){seat.setAttribute('data-state',j.state);
var fe=document.getElementById('fleet-end');fe.hidden=!j.fleet_ends_at;if(j.fleet_ends_at){document.getElementById('fleet-end-time').textContent=j.fleet_ends_at.replace('T',' ').replace(/:\d\d(\.\d+)?(Z|\+00:00)$/,'');}
states.forEach(function(s){document.getElementById('state-'+s).hidden=(s!==j.state);});
document.getElementById('vm-trouble').hidden=!(j.state==='connecting'&&j.vm_status==='error');
var over=ended.indexOf(j.state)>=0;document.getElementById('code-form').hidden=over;
document.getElementById('pin-box').hidden=over||!j.pin;if(j.pin){document.getElementById('pin').textContent=j.pin;}
return over;}
function poll(){fetch('/api/seat/'+encodeURIComponent(token),{cache:'no-store'}).then(function(r){return r.ok?r.json():null})
.then(function(j){if(j&&typeof j.state==='string'&&show(j)){clearInterval(timer);}}).catch(function(){});}
var timer=setInterval(poll,2000);poll();})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_input_is_escaped_and_the_form_keeps_what_was_typed() {
        let page = participant_page(&ParticipantPage {
            free_vms: 3,
            email: "\"><script>alert(1)</script>",
            crd_command: "</textarea><script>alert(2)</script>",
            error: Some("<b>bad</b>"),
            ask_code: false,
        })
        .into_string();
        assert!(!page.contains("<script>alert(1)") && !page.contains("<script>alert(2)"));
        assert!(page.contains("&lt;/textarea&gt;&lt;script&gt;alert(2)"));
        assert!(page.contains("&lt;b&gt;bad&lt;/b&gt;"));
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;"));
        assert!(page.contains("id=\"free-count\">3<"));
        assert!(page.contains("<label for=\"email\">") && page.contains("<label for=\"crd_command\">"));
        assert!(
            !page.contains("http://") && !page.contains("cdn"),
            "self-contained"
        );
    }

    #[test]
    fn the_seat_page_shows_host_pin_state_and_the_access_link() {
        let mut p = SeatPage {
            token: "ab12",
            hostname: "vm-1",
            pin: Some("012345"),
            state: "connecting",
            notice: None,
            error: Some("<i>late</i>"),
            crd_command: "",
            fleet_ends_at: None,
        };
        let page = seat_page(&p).into_string();
        assert!(page.contains("id=\"hostname\">vm-1<") && page.contains("id=\"pin\">012345<"));
        assert!(page.contains(CRD_ACCESS_URL));
        assert!(
            page.contains("data-state=\"connecting\"") && page.contains("action=\"/api/seat/ab12/code\"")
        );
        assert!(page.contains("&lt;i&gt;late") && !page.contains("<i>late"));
        // Every state has its element, and only the current one is shown.
        for s in SEAT_STATES {
            assert!(page.contains(&format!("id=\"state-{s}\"")), "{s}");
        }
        assert!(!page.contains("id=\"state-connecting\" hidden"));
        assert!(page.contains("id=\"state-ready\" hidden"));
        // The VM's own trouble is told apart from a refused code, by the live script.
        assert!(page.contains("id=\"vm-trouble\" hidden") && page.contains("vm_status==='error'"));
        p.state = "reassigned";
        p.pin = None;
        let page = seat_page(&p).into_string();
        assert!(page.contains("id=\"code-form\"") && page.contains("hidden"));
        assert!(!page.contains("012345"));
    }
}
