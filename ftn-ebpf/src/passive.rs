//! Passive health: the gateway sees every server's answers. A server that leaves new
//! connections' SYNs unanswered, or answers them with RSTs, is reported to the controller
//! through a ring buffer (at most once per `passive_rearm_ns` per server). A report only makes
//! the controller probe that server at once; the verdict stays with the active checks.

use ftn_common::{DataplaneConfig, PassiveEvent, PASSIVE_OFF, PASSIVE_RST, PASSIVE_UNANSWERED};

use crate::maps::{FTN_EVENTS, FTN_PASSIVE};

#[inline(always)]
fn report(server_id: u32, kind: u32, count: u32, age_ns: u64) {
    let ev = PassiveEvent {
        server_id,
        kind,
        count,
        age_us: (age_ns / 1000) as u32,
    };
    // A full ring only loses this report; the next packet may report again.
    let _ = FTN_EVENTS.output::<PassiveEvent>(&ev, 0);
}

/// A new TCP connection's SYN was forwarded to `server_id`.
#[inline(always)]
pub fn on_syn(server_id: u32, now: u64, cfg: &DataplaneConfig) {
    if cfg.passive_min == PASSIVE_OFF {
        return;
    }
    let Some(p) = FTN_PASSIVE.get_ptr_mut(server_id) else {
        return;
    };
    // SAFETY: pointer from a successful array lookup; races with other CPUs only lose counts.
    let st = unsafe { &mut *p };
    if st.unanswered == 0 {
        st.unanswered_since_ns = now;
    }
    st.unanswered = st.unanswered.saturating_add(1);
    let age = now.saturating_sub(st.unanswered_since_ns);
    if st.unanswered >= cfg.passive_min
        && age >= cfg.passive_window_ns
        && now.saturating_sub(st.last_report_ns) >= cfg.passive_rearm_ns
    {
        st.last_report_ns = now;
        report(server_id, PASSIVE_UNANSWERED, st.unanswered, age);
    }
}

/// `server_id` sent a TCP packet back to a client.
#[inline(always)]
pub fn on_reply(server_id: u32, rst: bool, now: u64, cfg: &DataplaneConfig) {
    if cfg.passive_min == PASSIVE_OFF {
        return;
    }
    let Some(p) = FTN_PASSIVE.get_ptr_mut(server_id) else {
        return;
    };
    // SAFETY: as above.
    let st = unsafe { &mut *p };
    if !rst {
        if st.unanswered != 0 || st.rsts != 0 {
            st.unanswered = 0;
            st.rsts = 0;
        }
        return;
    }
    st.rsts = st.rsts.saturating_add(1);
    if st.rsts >= cfg.passive_min && now.saturating_sub(st.last_report_ns) >= cfg.passive_rearm_ns {
        st.last_report_ns = now;
        report(server_id, PASSIVE_RST, st.rsts, 0);
    }
}
