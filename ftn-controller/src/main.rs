fn main() {
    println!("ftn {}", env!("CARGO_PKG_VERSION"));
}
