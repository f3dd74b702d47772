//! The socket wrappers of a connection ([`Rewind`](super::first_request::Rewind),
//! [`SendTimeout`](super::SendTimeout), [`FlushWatch`](super::handoff::FlushWatch)) each
//! change one or two calls of `AsyncRead`/`AsyncWrite` and pass the others on to the socket
//! they wrap. [`forward_io!`] writes the passing-on, so each wrapper spells out only what it
//! changes.

/// Inside an `impl AsyncRead` or `impl AsyncWrite` block of a wrapper whose socket is its
/// field `inner` (`Unpin`): each method named calls the same method of `inner`.
///
/// ```ignore
/// impl<S: AsyncWrite + Unpin> AsyncWrite for Wrapper<S> {
///     fn poll_write(…) { /* what the wrapper changes */ }
///     forward_io!(poll_write_vectored, is_write_vectored, poll_flush, poll_shutdown);
/// }
/// ```
macro_rules! forward_io {
    ($($method:ident),+ $(,)?) => {
        $(forward_io!(@ $method);)+
    };
    (@ poll_read) => {
        fn poll_read(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &mut ::tokio::io::ReadBuf<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncRead::poll_read(::std::pin::Pin::new(&mut self.inner), cx, buf)
        }
    };
    (@ poll_write) => {
        fn poll_write(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write(::std::pin::Pin::new(&mut self.inner), cx, buf)
        }
    };
    (@ poll_write_vectored) => {
        fn poll_write_vectored(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write_vectored(
                ::std::pin::Pin::new(&mut self.inner),
                cx,
                bufs,
            )
        }
    };
    (@ is_write_vectored) => {
        fn is_write_vectored(&self) -> bool {
            ::tokio::io::AsyncWrite::is_write_vectored(&self.inner)
        }
    };
    (@ poll_flush) => {
        fn poll_flush(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.inner), cx)
        }
    };
    (@ poll_shutdown) => {
        fn poll_shutdown(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.inner), cx)
        }
    };
}

pub(super) use forward_io;
