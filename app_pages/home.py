"""Home — choose the networks and the dataset, and see them side by side."""

import streamlit as st

from app_support import networks, state, ui


def render() -> None:
    ui.page_header("home")
    st.subheader("Choose the networks")
    networks.choose()
    pair, _ = state.choice()
    st.subheader("The networks in use")
    st.markdown(f"**{ui.capitalised(pair.label)}** on *{pair.dataset}*")
    networks.show(pair)
    ui.next_page("alignment")


render()
