//! The aya `Dataplane`'s lifecycle: attach in a chosen mode, pin maps and links, keep XDP
//! attached after the controller's handle is gone, adopt the pinned state without losing map
//! contents, detach cleanly; and clear errors for bad interfaces.

use ftn_controller::dataplane::{
    detach, pinned_dataplane_exists, AyaDataplane, AyaOptions, Dataplane, DataplaneError,
    ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch, XdpAttachMode};
use ftn_tests::{require_root, Netns, PinDir};

fn xdp_on(ns: &Netns, dev: &str) -> bool {
    let out = ns.ip(&["link", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn pin_adopt_detach() {
    require_root();
    let ns = Netns::new("ftpa");
    ns.ip(&["link", "add", "pa0", "type", "veth", "peer", "name", "pa1"]);
    ns.ip(&["link", "set", "pa0", "up"]);
    ns.ip(&["link", "set", "pa1", "up"]);
    let pins = PinDir::new();
    let _in = ns.enter();

    // A bad interface is refused by name, and nothing is left pinned.
    let err = AyaDataplane::load(&AyaOptions {
        interfaces: vec!["nope0".into()],
        pin_dir: Some(pins.path.clone()),
        ..AyaOptions::default()
    })
    .err()
    .expect("attaching to a missing interface must fail");
    println!("missing interface: {err}");
    assert!(
        matches!(err, DataplaneError::UnknownInterface(ref n) if n == "nope0"),
        "{err:?}"
    );
    assert!(
        !pinned_dataplane_exists(&pins.path),
        "a failed load left a pinned dataplane"
    );

    // Load, attach (generic mode as asked), pin, provision.
    let vip = "198.18.100.1".parse().unwrap();
    let web = ResourceMatch {
        vip,
        protocol: Protocol::Tcp,
        port: 80,
    };
    {
        let mut dp = AyaDataplane::load(&AyaOptions {
            interfaces: vec!["pa0".into()],
            mode: XdpAttachMode::Generic,
            pin_dir: Some(pins.path.clone()),
            ..AyaOptions::default()
        })
        .expect("load with pins");
        assert_eq!(dp.attached()[0].mode, XdpAttachMode::Generic);
        assert!(!dp.adopted());
        dp.set_server(
            7,
            &ServerEntry {
                addr: "198.18.2.10".parse().unwrap(),
                up: true,
                generation: 1,
            },
        )
        .unwrap();
        dp.set_resource(
            &web,
            &ResourceAssignment {
                resource_id: 3,
                server: Some(7),
                generation: 4,
                on_no_server: NoServerAction::Drop,
            },
        )
        .unwrap();
        // A resource pointing to a server of the other family is refused.
        let v6 = ResourceMatch {
            vip: "2001:2:100::1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let e = dp
            .set_resource(
                &v6,
                &ResourceAssignment {
                    resource_id: 4,
                    server: Some(7),
                    generation: 1,
                    on_no_server: NoServerAction::Drop,
                },
            )
            .unwrap_err();
        println!("family mismatch: {e}");
        assert!(matches!(e, DataplaneError::FamilyMismatch { .. }), "{e:?}");
        // Out-of-range ids are refused before touching a map.
        let e = dp
            .set_server(
                1_000_000,
                &ServerEntry {
                    addr: "198.18.2.11".parse().unwrap(),
                    up: true,
                    generation: 1,
                },
            )
            .unwrap_err();
        assert!(
            matches!(e, DataplaneError::ServerIdOutOfRange { .. }),
            "{e:?}"
        );
    } // the controller's handle is gone...
    assert!(
        xdp_on(&ns, "pa0"),
        "XDP must stay attached while the controller is stopped (pinned link)"
    );
    assert!(pinned_dataplane_exists(&pins.path));

    // ...and the next start adopts the pinned state as it was.
    let mut dp = AyaDataplane::open(&AyaOptions {
        interfaces: vec!["pa0".into()],
        pin_dir: Some(pins.path.clone()),
        ..AyaOptions::default()
    })
    .expect("adopt the pinned dataplane");
    assert!(dp.adopted(), "open() must adopt, not reload");
    assert_eq!(dp.attached().len(), 1);
    assert_eq!(dp.attached()[0].interface, "pa0");
    // The resource written before the restart is still there, unchanged.
    let v = dp
        .resource(&web)
        .unwrap()
        .expect("resource survived the restart");
    assert_eq!((v.resource_id, v.server_id, v.generation), (3, 7, 4));
    // Writes and counter reads work through the adopted maps.
    dp.set_resource(
        &web,
        &ResourceAssignment {
            resource_id: 3,
            server: Some(7),
            generation: 5,
            on_no_server: NoServerAction::Drop,
        },
    )
    .expect("write through adopted maps");
    assert_eq!(dp.resource(&web).unwrap().unwrap().generation, 5);
    assert_eq!(dp.resource_stats(3).unwrap().packets, 0);
    drop(dp);

    // Detach removes XDP from the interface and every pin.
    let detached = detach(&pins.path).expect("detach");
    println!("detached from {detached:?}");
    assert_eq!(detached, vec!["pa0".to_string()]);
    assert!(!xdp_on(&ns, "pa0"), "XDP still attached after detach");
    assert!(!pins.path.exists(), "pin directory left behind");
}
