//! The kernel routing table behind [`super::RouteTable`]: rtnetlink requests on a socket of the
//! announcer's own.
//!
//! Each VIP is a host route (/32, /128), each of `[announce] return_routes` a route of its
//! prefix, of type `blackhole` with protocol [`ROUTE_PROTOCOL`] in `[announce] table`. The table is never consulted for forwarding (no `ip rule` points at it;
//! XDP rewrites the VIP's packets before the kernel routes them): it is only the list the
//! routing daemon exports. `blackhole` makes the list harmless if a rule ever did point at it,
//! and needs no interface. Routes of other protocols in the table are never touched.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::Prefix;

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::AsyncSocket as _;
use rtnetlink::{Handle, RouteMessageBuilder};

/// The routing protocol number of ftn's routes (`ip route show table 100 proto 250`; name it in
/// /etc/iproute2/rt_protos.d/ftn.conf: `250 ftn`). Not one of the numbers iproute2 names.
pub const ROUTE_PROTOCOL: u8 = 250;

pub struct KernelTable {
    handle: Handle,
    table: u32,
}

impl KernelTable {
    /// Opens a netlink socket (its connection runs as a task on the current runtime).
    pub fn open(table: u32) -> std::io::Result<KernelTable> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        // Strict dumps: the kernel filters a dump by the table and protocol asked for, so that a
        // gateway holding a full BGP table in its main table does not dump it every RECHECK.
        // (Without it, the list below filters the whole dump itself.)
        if let Err(e) = conn
            .socket_mut()
            .socket_mut()
            .set_netlink_get_strict_chk(true)
        {
            tracing::debug!("NETLINK_GET_STRICT_CHK: {e}; route dumps are filtered by ftn");
        }
        tokio::spawn(conn);
        Ok(KernelTable { handle, table })
    }

    fn message(&self, p: Prefix) -> RouteMessage {
        match p.addr {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, p.len)
                .table_id(self.table)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .kind(RouteType::BlackHole)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, p.len)
                .table_id(self.table)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .kind(RouteType::BlackHole)
                .build(),
        }
    }

    /// The route's table (the header's byte, or the attribute for tables past 255).
    fn table_of(m: &RouteMessage) -> u32 {
        m.attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table))
    }

    fn prefix(m: &RouteMessage) -> Option<Prefix> {
        let addr = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        // A default route carries no destination attribute.
        let addr = addr.unwrap_or(match m.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        });
        Some(Prefix {
            addr,
            len: m.header.destination_prefix_length,
        })
    }
}

#[async_trait::async_trait]
impl super::RouteTable for KernelTable {
    async fn list(&mut self) -> Result<BTreeSet<Prefix>, String> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RouteMessage::default();
            filter.header.address_family = family;
            filter.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
            filter.attributes.push(RouteAttribute::Table(self.table));
            let mut routes = self.handle.route().get(filter).execute();
            while let Some(m) = routes.try_next().await.map_err(|e| e.to_string())? {
                if Self::table_of(&m) != self.table
                    || m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                {
                    continue;
                }
                if let Some(p) = Self::prefix(&m) {
                    out.insert(p);
                }
            }
        }
        Ok(out)
    }

    async fn add(&mut self, p: Prefix) -> Result<(), String> {
        let m = self.message(p);
        self.handle
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove(&mut self, p: Prefix) -> Result<(), String> {
        let m = self.message(p);
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            // Already gone (removed by hand): what was wanted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
