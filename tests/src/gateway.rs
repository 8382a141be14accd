//! The controller lab: `ftn run` on the lab's gateway (see [`crate::lab`]), real services on
//! the primary and backup, a client that opens connections to the VIP. Shared by the
//! controller and hostile-input labs.

use std::{net::IpAddr, time::Duration};

use crate::{
    ftn::{Ftn, Prober},
    lab::{attach_pass_in, in_ns, topology, Conn, Service, Topology, VIP4, VIP6},
    require_root,
    timing::Timing,
};

/// A new connection every this often, for the labs' probers.
pub const EVERY: Duration = Duration::from_millis(10);

/// Fields drop in order: the controller first, then the services, and the namespaces last
/// (a controller that outlived its interfaces would log their disappearance).
pub struct Lab {
    pub ftn: Ftn,
    pub primary: Option<Service>,
    pub backup: Option<Service>,
    /// The pass-through programs on the hosts' ends of the veths (a frame redirected into a
    /// veth is delivered only when its peer has an XDP program).
    pub pass: Vec<aya::Ebpf>,
    pub t: Topology,
    /// The check timing the lab's config declares; every wait is derived from it.
    pub timing: Timing,
}

/// How [`Lab::start_with`] builds the lab.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Attach the pass-through program on the primary's end (`p0`). Without it, native XDP on
    /// the gateway redirects into a veth that drops every redirected frame.
    pub primary_pass: bool,
    /// `ftn run`'s open-file limit (soft and hard), as the unit's `LimitNOFILE=`.
    pub nofile: Option<u64>,
    /// Lines added to the config's `[gateway]` table.
    pub gateway: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            primary_pass: true,
            nofile: None,
            gateway: "",
        }
    }
}

impl Lab {
    /// Topology, services, and a running controller with the standard config (every check
    /// with `timing`) plus `extra` lines on both resources; the client is served by the primary.
    pub fn start(timing: Timing, extra: &str) -> Lab {
        let lab = Lab::start_with(timing, extra, Options::default());
        lab.ftn
            .wait_current("web", Some("p1"), timing.first_serve());
        assert_eq!(lab.ask_new(), "primary");
        lab
    }

    /// Like [`Lab::start`], built as `opts` says, and without waiting for the client to be
    /// served (a lab whose dataplane drops frames never serves it).
    pub fn start_with(timing: Timing, extra: &str, opts: Options) -> Lab {
        require_root();
        let t = topology();
        let mut pass = vec![
            attach_pass_in(&t.client, "c0"),
            attach_pass_in(&t.backup, "b0"),
        ];
        if opts.primary_pass {
            pass.push(attach_pass_in(&t.primary, "p0"));
        }
        let primary = Some(Service::start(&t.primary, "primary"));
        let backup = Some(Service::start(&t.backup, "backup"));
        let mut ftn = Ftn::new(&t.gateway);
        ftn.nofile = opts.nofile;
        let config = ftn
            .standard_config(&timing.check_options(), extra)
            .replacen("\n[api]", &format!("{}\n[api]", opts.gateway), 1);
        ftn.write_config(&config);
        ftn.start();
        Lab {
            timing,
            t,
            pass,
            primary,
            backup,
            ftn,
        }
    }

    pub fn vip() -> IpAddr {
        VIP4.parse().unwrap()
    }

    pub fn vip6() -> IpAddr {
        VIP6.parse().unwrap()
    }

    /// A new connection from the client: who answers.
    pub fn ask_new(&self) -> String {
        in_ns(&self.t.client, || Conn::open(Lab::vip()).ask())
    }

    pub fn open(&self) -> Conn {
        in_ns(&self.t.client, || Conn::open(Lab::vip()))
    }

    pub fn ask(&self, c: Conn) -> (Conn, Result<String, String>) {
        in_ns(&self.t.client, move || {
            let mut c = c;
            let r = c.try_ask();
            (c, r)
        })
    }

    /// A prober from the client to the IPv4 VIP, a new connection every [`EVERY`].
    pub fn probe(&self) -> Prober {
        Prober::start(&self.t.client, Lab::vip(), EVERY, Duration::from_secs(60))
    }

    /// The same to the IPv6 VIP.
    pub fn probe6(&self) -> Prober {
        Prober::start(&self.t.client, Lab::vip6(), EVERY, Duration::from_secs(60))
    }
}
